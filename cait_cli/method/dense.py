"""timm's dense-feature API on CAIT models: forward_intermediates and its companions.

Segmentation and detection code (timm's `features_only` FeatureGetterNet,
segmentation_models_pytorch, Hugging Face's TimmBackbone, mmseg's TIMMBackbone)
asks a timm ViT for `forward_intermediates`. A CAIT model answers with timm's
signature and semantics; what differs is that its blocks may merge tokens. By
default every intermediate is unmerged back onto the full patch grid (each merged
token copied to the cells it covers), so callers see a plain ViT's constant
stride; `merged_grids=True` returns each block's own (smaller) grid instead, for
heads that can use a pyramid.

timm's implementation cannot be reused as is: it runs blocks on a plain tensor
and reshapes every output to the input's patch grid, while CAIT blocks pass a
TokenState whose grid shrinks as tokens merge.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._features import feature_take_indices

from .atme import Axis, grid_after, unmerge
from .tokens import TokenState

OUTPUT_FORMATS = ("NCHW", "NLC")


class DenseMixin:
    """forward_intermediates, get_intermediate_layers, prune_intermediate_layers for CAIT models.

    Mixed into CaitMixin; relies on its `embed` (images -> TokenState before the blocks).
    """

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        merged_grids: bool = False,
    ) -> Union[List[Any], Tuple[torch.Tensor, List[Any]], Dict[str, Any]]:
        """timm's VisionTransformer.forward_intermediates, for a model that merges tokens.

        indices: last n blocks if int, all if None, else the listed block indices
        output_fmt: "NCHW" -> each intermediate (B, C, H, W); "NLC" -> (B, H*W, C)
        merged_grids: False -> (H, W) is the input's full patch grid (merged tokens unmerged);
                      True -> the block's merged grid (H', W') after its own merges
        Returns what timm's does: (final features (B, N', C), intermediates), the
        intermediates alone, or a dict with 'image_intermediates' (+ '_prefix', 'image_features').
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        if attn_mask is not None or is_causal:
            raise NotImplementedError("CAIT models do not take attention masks")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        state: TokenState = self.embed(x)
        full_grid = state.grid
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        taken: List[Tuple[int, TokenState]] = []
        for i, block in enumerate(blocks):
            state = block(state)
            if i in take_indices:
                taken.append((i, state))

        prefixes, maps = [], []
        for i, block_state in taken:
            tokens = self.norm(block_state.x) if norm else block_state.x  # (B, P + H'*W', C)
            prefixes.append(tokens[:, : block_state.num_prefix])
            patches = tokens[:, block_state.num_prefix :]
            axes = None if merged_grids else self.merge_axes_through(i)
            maps.append(patch_map(patches, block_state.grid, full_grid, axes, output_fmt))
        has_prefix = state.num_prefix > 0

        if output_dict:
            result: Dict[str, Any] = {"image_intermediates": maps}
            if has_prefix and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefixes
            if not intermediates_only:
                result["image_features"] = self.norm(state.x)
            return result
        if return_prefix_tokens and has_prefix:
            maps = list(zip(maps, prefixes))
        if intermediates_only:
            return maps
        return self.norm(state.x), maps

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: Union[int, List[int], Tuple[int]] = 1,
        reshape: bool = False,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        merged_grids: bool = False,
    ) -> List[Any]:
        """timm's (DINO-style) get_intermediate_layers, with the merged_grids option."""
        return self.forward_intermediates(
            x, n, return_prefix_tokens=return_prefix_tokens, norm=norm,
            output_fmt="NCHW" if reshape else "NLC", intermediates_only=True,
            attn_mask=attn_mask, merged_grids=merged_grids,
        )

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm's pruning (drop the blocks after the last index), keeping the merge schedule in step."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        self.cait_schedule = [step for step in self.cait_schedule if step.block < len(self.blocks)]
        return take_indices

    def merge_axes_through(self, block: int) -> List[Axis]:
        """Merge axes applied by blocks 0..block, in order."""
        return [step.axis for step in self.cait_schedule if step.block <= block]

    def merged_grid_sizes(self, grid: Tuple[int, int]) -> List[Tuple[int, int]]:
        """Patch grid after each block, for an input whose full patch grid is `grid`."""
        return [grid_after(tuple(grid), self.merge_axes_through(i)) for i in range(len(self.blocks))]


def patch_map(patches: torch.Tensor, grid: Tuple[int, int], full_grid: Tuple[int, int],
               axes: Optional[Sequence[Axis]], output_fmt: str) -> torch.Tensor:
    """Patch tokens (B, H'*W', C) on `grid` -> a map in output_fmt.

    axes None: keep the merged grid; else unmerge those steps back to full_grid.
    """
    if axes is None and output_fmt == "NLC":
        return patches
    b, _, c = patches.shape
    fmap = patches.transpose(1, 2).reshape(b, c, *grid)  # (B, C, H', W')
    if axes is not None:
        fmap = unmerge(fmap, full_grid, axes)  # (B, C, H, W)
    if output_fmt == "NLC":
        return fmap.flatten(2).transpose(1, 2)  # (B, H*W, C)
    return fmap.contiguous()
