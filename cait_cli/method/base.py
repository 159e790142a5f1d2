"""What a CAIT model of either timm family is: the methods it gains (CaitMixin) and the steps
patching shares (checking the merge schedule, converting blocks, setting merges and the class).

The patched model keeps timm's class (as a subclass), its parameter names and its
head, so `forward`, `forward_head`, state dicts and distilled DeiT all keep
working. What changes: blocks pass a TokenState along, may merge tokens after
their attention, and may carry CDCP channel gates. vit.py and eva.py convert each
family's blocks; model.py chooses between them.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import Format, PatchEmbed

from ..errors import CaitError
from .atme import MergeStep, TokenMerge, grid_after, patch_counts, unmerge
from .block import IMPORTANCE_SOURCES, CaitBlock, ImportanceSource
from .dense import DenseMixin, patch_map
from .pooling import pool_tokens, pools_by_size
from .tokens import TokenState


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


def is_cait_block(block: nn.Module) -> bool:
    return isinstance(block, CaitBlock)


def patch_model(model: nn.Module, schedule: Sequence[MergeStep], importance: Optional[str],
                convert_block: Callable[[nn.Module], CaitBlock], mixin: type) -> nn.Module:
    """Patch a checked model in place: the steps both families share (see model.patch_vit).

    convert_block: the family's block -> CaitBlock (sharing its weights); mixin: what the model gains.
    Schedule and importance are checked before anything changes.
    """
    importance = importance_source(model, importance)
    schedule = list(schedule)
    check_schedule(schedule, len(model.blocks), tuple(model.patch_embed.grid_size))
    for i, block in enumerate(model.blocks):
        if not is_cait_block(block):
            model.blocks[i] = convert_block(block)
    set_merges(model, schedule, importance)
    model.__class__ = cait_class(type(model), mixin)
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


def importance_source(model: nn.Module, asked: Optional[str]) -> ImportanceSource:
    """The token-importance signal `model` will use: `asked`, checked, or its default."""
    has_cls = model.cls_token is not None
    if asked is None:
        return getattr(model, "cait_importance", None) or ("cls" if has_cls else "received")
    if asked not in IMPORTANCE_SOURCES:
        raise CaitError(f"token importance must be one of {', '.join(IMPORTANCE_SOURCES)}, got {asked!r}")
    if asked == "cls" and not has_cls:
        raise CaitError(f"{type(model).__name__} has no class token to score tokens by; use 'received'")
    return asked


def _accept_any_image_size(model: nn.Module) -> None:
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
