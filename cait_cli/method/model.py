"""Patch a timm VisionTransformer into a CAIT model, in place (as ToMe patches timm).

The patched model keeps timm's class (as a subclass), its parameter names and its
head, so `forward`, `forward_head`, state dicts and distilled DeiT all keep
working. What changes: blocks pass a TokenState along, may merge tokens after
their attention, and may carry CDCP channel gates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import Format, Mlp, PatchDropout, PatchEmbed
from timm.layers.attention import Attention
from timm.models.eva import Eva
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import CaitError
from .atme import MergeStep, TokenMerge, grid_after, patch_counts, unmerge
from .block import IMPORTANCE_SOURCES, CaitAttention, CaitBlock, CaitMlp, ImportanceSource
from .dense import DenseMixin, patch_map
from .pooling import pool_tokens, pools_by_size
from .tokens import TokenState


@dataclass(frozen=True)
class BlockWidths:
    """Kept channels of one block: per-head q/k and v widths, MLP hidden width."""

    qk: int
    v: int
    mlp: int


class CaitMixin(DenseMixin):
    """Methods a patched VisionTransformer gains; see `patch_vit` (dense API: see DenseMixin)."""

    cait_schedule: List[MergeStep]
    cait_importance: ImportanceSource

    def __reduce_ex__(self, protocol: int):
        # The class is made at run time (cait_class), so pickle cannot find it by name;
        # rebuild it from the timm class it extends (torch.save(model), deepcopy).
        base = next(c for c in type(self).__bases__ if not issubclass(c, CaitMixin))
        mixin = next(c for c in type(self).__bases__ if issubclass(c, CaitMixin))
        return _new_cait_model, (base, mixin), self.__getstate__()

    def embed(self, x: torch.Tensor) -> TokenState:
        """Images (B, 3, H, W) -> TokenState before the first block, on the images' own patch grid."""
        x = self.patch_embed(x)  # (B, N, C), or (B, H, W, C) with dynamic image size
        grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(self.patch_embed.grid_size)
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))  # pos-embed resampled to the grid
        return TokenState(x=x, size=None, grid=grid, num_prefix=self.num_prefix_tokens)

    def forward_tokens(self, x: torch.Tensor) -> TokenState:
        """Images (B, 3, H, W) -> TokenState after the last block (before the final norm)."""
        return self.blocks(self.embed(x))

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        return self._final_tokens(x, attn_mask, is_causal)[0]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        tokens, size = self._final_tokens(x, attn_mask, is_causal)
        return self.forward_head(tokens, size=size)

    def _final_tokens(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor],
                      is_causal: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Normalised final tokens (B, P + H'*W', C) and their sizes (1, P + H'*W', 1) or None."""
        if attn_mask is not None or is_causal:
            raise NotImplementedError("CAIT models do not take attention masks")
        state = self.forward_tokens(x)
        return self.norm(state.x), state.size

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's forward_head; average and attention pooling weigh each token by `size`,
        the patches it covers (default: the sizes the schedule gives the model's own grid)."""
        if not pools_by_size(self):  # class-token pooling (and distilled DeiT's two heads)
            return super().forward_head(x, pre_logits=pre_logits)
        x = self.head_drop(self.fc_norm(self.pool(x, size=size)))
        return x if pre_logits else self.head(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None,
             size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's pool, with merged tokens weighted by size (see method/pooling.py)."""
        if pools_by_size(self, pool_type) and size is None:
            size = self.token_sizes(x.shape[1])
        if size is None or not pools_by_size(self, pool_type):
            return super().pool(x, pool_type)
        return pool_tokens(self, x, size, pool_type)

    def token_sizes(self, tokens: int) -> Optional[torch.Tensor]:
        """Sizes (1, P + H'*W', 1) of the final tokens on the model's own grid; None if nothing merges.

        tokens: the count the caller holds, checked against that grid (pass sizes for other grids).
        """
        if not self.cait_schedule:
            return None
        counts = patch_counts(tuple(self.patch_embed.grid_size), self.merge_axes_through(len(self.blocks)))
        if self.num_prefix_tokens + counts.numel() != tokens:
            raise ValueError(f"{tokens} tokens are not this model's merged grid at its own image size; "
                             "pass size= (TokenState.size) to pool them")
        size = torch.cat([torch.ones(self.num_prefix_tokens), counts])
        return size.view(1, -1, 1).to(self.patch_embed.proj.weight.device)

    def forward_full_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """What a headless backbone's users read, on the full grid (for feature distillation).

        Returns the normalised final tokens with the patch tokens unmerged onto the images'
        full patch grid, (B, P + H*W, C), and the pooled pre-logits feature (B, C).
        """
        tokens, size = self._final_tokens(x, None, False)
        pooled = self.forward_head(tokens, pre_logits=True, size=size)
        p, axes = self.num_prefix_tokens, self.merge_axes_through(len(self.blocks))
        full_grid = self.patch_grid(x.shape[-2:])
        patches = patch_map(tokens[:, p:], grid_after(full_grid, axes), full_grid, axes, "NLC")
        return torch.cat([tokens[:, :p], patches], dim=1), pooled

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised patch features on the merged grid: (B, C, H', W')."""
        state = self.forward_tokens(x)
        patches = self.norm(state.x)[:, state.num_prefix:]  # (B, H'*W', C)
        h, w = state.grid
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)

    def unmerge(self, features: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """(B, C, H', W') -> (B, C, H, W): each merged token copied back to its cells.

        grid: the images' full patch grid (H, W); default the size the model was built for
        (use `patch_grid(images.shape[-2:])` for images of another size).
        """
        grid = tuple(grid or self.patch_embed.grid_size)
        return unmerge(features, grid, [step.axis for step in self.cait_schedule])

    def patch_grid(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Full patch grid (H, W) of images of size img_size (height, width)."""
        return tuple(self.patch_embed.dynamic_feat_size(tuple(img_size)))


@functools.lru_cache(maxsize=None)
def cait_class(base: type, mixin: type = CaitMixin) -> type:
    """The CAIT subclass of a timm model class (one per base class; Eva's mixin is eva.CaitEvaMixin)."""
    if issubclass(base, CaitMixin):
        return base
    return type(f"Cait{base.__name__}", (mixin, base), {})


def _new_cait_model(base: type, mixin: type = CaitMixin) -> nn.Module:
    """An empty CAIT model of base's subclass; unpickling fills in its state."""
    cls = cait_class(base, mixin)
    return cls.__new__(cls)


def is_cait(model: nn.Module) -> bool:
    return isinstance(model, CaitMixin)


def check_vit(model: nn.Module) -> None:
    """Raise CaitError unless CAIT can patch this model."""
    name = type(model).__name__
    if isinstance(model, Eva):
        from .eva import check_eva  # eva.py builds on this module
        return check_eva(model)
    if not isinstance(model, VisionTransformer):
        raise CaitError(f"{name} is not a timm VisionTransformer or Eva; cait compresses timm's ViT family")
    if model.attn_pool is not None and model.attn_pool.pos_embed is not None:
        raise CaitError(f"{name}'s attention pooling has position embeddings of a fixed token count, "
                        "which merging changes")
    if isinstance(model.patch_drop, PatchDropout) and model.patch_drop.prob > 0:
        raise CaitError(f"{name} drops patches during training, which breaks the token grid")
    for i, block in enumerate(model.blocks):
        _check_block(block, i)


def _check_block(block: nn.Module, index: int) -> None:
    if is_cait_block(block):
        return
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        raise CaitError(f"block {index} is a {type(block).__name__}; cait supports timm's standard ViT block")
    attn, mlp = block.attn, block.mlp
    plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm))
    if not plain or attn.gate is not None:
        raise CaitError(f"block {index} uses q/k or scale norms or gating, which cait does not support")


def is_cait_block(block: nn.Module) -> bool:
    return isinstance(block, CaitBlock)


def convert_vit_block(block: Block) -> CaitBlock:
    attn, mlp = block.attn, block.mlp
    heads, head_dim = attn.num_heads, attn.head_dim
    cait_attn = CaitAttention(attn.qkv, attn.proj, heads, head_dim, head_dim, attn.scale,
                              attn.attn_drop.p, attn.proj_drop)
    cait_mlp = CaitMlp(mlp.fc1, mlp.act, mlp.fc2, mlp.drop1, mlp.drop2)
    return CaitBlock(block.norm1, cait_attn, block.ls1, block.drop_path1,
                     block.norm2, cait_mlp, block.ls2, block.drop_path2)


def patch_vit(model: VisionTransformer, schedule: Sequence[MergeStep] = (),
              importance: Optional[ImportanceSource] = None) -> VisionTransformer:
    """Turn a timm ViT into a CAIT model in place, with the given merge schedule.

    importance: what scores tokens for ATME's fusion (see CaitAttention.importance_query);
    None keeps a CAIT model's own, else "cls" where the model has a class token,
    "received" where it has none.
    Calling it again on a CAIT model replaces the schedule. Weights are shared with
    the original modules, not copied.
    """
    if isinstance(model, Eva):
        from .eva import patch_eva  # eva.py builds on this module
        return patch_eva(model, schedule, importance)
    check_vit(model)
    importance = importance_source(model, importance)
    schedule = list(schedule)
    check_schedule(schedule, len(model.blocks), tuple(model.patch_embed.grid_size))
    for i, block in enumerate(model.blocks):
        if not is_cait_block(block):
            model.blocks[i] = convert_vit_block(block)
    set_merges(model, schedule, importance)
    model.__class__ = cait_class(type(model))
    return model


def set_merges(model: nn.Module, schedule: List[MergeStep], importance: ImportanceSource) -> None:
    """Give the (converted) blocks their merges and importance signal, and let the model take any image size."""
    for i, block in enumerate(model.blocks):
        axes = [step.axis for step in schedule if step.block == i]
        block.merge = TokenMerge(axes) if axes else None
        block.attn.importance_source = importance
    model.cait_schedule = schedule
    model.cait_importance = importance
    _accept_any_image_size(model)


def importance_source(model: VisionTransformer, asked: Optional[str]) -> ImportanceSource:
    """The token-importance signal `model` will use: `asked`, checked, or its default."""
    has_cls = model.cls_token is not None
    if asked is None:
        return getattr(model, "cait_importance", None) or ("cls" if has_cls else "received")
    if asked not in IMPORTANCE_SOURCES:
        raise CaitError(f"token importance must be one of {', '.join(IMPORTANCE_SOURCES)}, got {asked!r}")
    if asked == "cls" and not has_cls:
        raise CaitError(f"{type(model).__name__} has no class token to score tokens by; use 'received'")
    return asked


def _accept_any_image_size(model: VisionTransformer) -> None:
    """Switch a timm ViT to what its `dynamic_img_size=True` builds: any image size whose sides are
    multiples of the patch size, position embeddings resampled to the grid that arrives.

    At the size the model was built for, timm's resampling returns the embeddings unchanged,
    so outputs there are identical. The merge schedule applies to whatever grid arrives.
    """
    embed = model.patch_embed
    if not isinstance(embed, PatchEmbed):  # another embedding keeps its own rules
        return
    model.dynamic_img_size = True
    embed.strict_img_size = False
    embed.flatten = False
    embed.output_fmt = Format.NHWC


def check_schedule(schedule: Sequence[MergeStep], depth: int, grid: Tuple[int, int]) -> None:
    blocks = [step.block for step in schedule]
    if blocks != sorted(blocks):
        raise CaitError("merge steps must be listed in block order")
    for step in schedule:
        if not 0 <= step.block < depth:
            raise CaitError(f"merge after block {step.block} is outside the model's {depth} blocks")
    h, w = grid_after(grid, [step.axis for step in schedule])
    if h < 1 or w < 1:
        raise CaitError("merge schedule leaves an empty grid")


def block_widths(model: nn.Module) -> List[BlockWidths]:
    """Current widths of every block of a CAIT model (gates not applied)."""
    return [BlockWidths(b.attn.qk_dim, b.attn.v_dim, b.mlp.fc2.in_features) for b in model.blocks]


def set_widths(model: nn.Module, widths: Sequence[BlockWidths]) -> None:
    """Give every block fresh Linear layers of the given widths (for rebuilding a slim model)."""
    if len(widths) != len(model.blocks):
        raise CaitError(f"{len(widths)} block widths for a model of {len(model.blocks)} blocks")
    for block, width in zip(model.blocks, widths):
        attn, mlp = block.attn, block.mlp
        dim, heads = attn.qkv.in_features, attn.num_heads
        attn.qkv = _linear_like(attn.qkv, dim, heads * (2 * width.qk + width.v))
        attn.proj = _linear_like(attn.proj, heads * width.v, attn.proj.out_features)
        attn.keep_qk_channels(torch.arange(width.qk))  # placeholders: a checkpoint's state fills them in
        attn.qk_dim, attn.v_dim = width.qk, width.v
        for name in mlp.hidden_inputs:
            setattr(mlp, name, _linear_like(getattr(mlp, name), dim, width.mlp))
        mlp.fc2 = _linear_like(mlp.fc2, width.mlp, mlp.fc2.out_features)


def _linear_like(ref: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=ref.bias is not None,
                     device=ref.weight.device, dtype=ref.weight.dtype)


def token_counts(model: nn.Module, grid: Optional[Tuple[int, int]] = None) -> List[Tuple[int, int]]:
    """(tokens into attention, tokens into MLP) of every block of a (CAIT) ViT."""
    grid = tuple(grid or model.patch_embed.grid_size)
    schedule = getattr(model, "cait_schedule", [])
    return tokens_per_block(grid, model.num_prefix_tokens, len(model.blocks), schedule)


def tokens_per_block(grid: Tuple[int, int], prefix: int, depth: int,
                     schedule: Sequence[MergeStep]) -> List[Tuple[int, int]]:
    """(tokens into attention, tokens into MLP) of each block under a merge schedule."""
    counts = []
    for i in range(depth):
        n_in = prefix + grid[0] * grid[1]
        grid = grid_after(grid, [s.axis for s in schedule if s.block == i])
        counts.append((n_in, prefix + grid[0] * grid[1]))
    return counts
