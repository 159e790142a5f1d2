"""ATME: asymmetric token merging of grid neighbours.

One merge step halves one axis of the patch grid: a "w" step fuses the column
pairs (2j, 2j+1), an "h" step fuses the row pairs. An odd axis keeps its last
column/row unpaired, so a grid of length L becomes ceil(L / 2) and the tokens
always reshape to (B, C, H', W').

The fusion is asymmetric: the pair is weighted by a softmax over
log(size) + alpha * importance, where importance is the attention a token
received (from the class token, or from the average query in models without
one; see block.py), normalised so the mean patch has importance 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Sequence, Tuple

import torch
import torch.nn as nn

from .tokens import TokenState

Axis = Literal["h", "w"]


@dataclass(frozen=True)
class MergeStep:
    """Halve grid axis `axis` after the attention of block `block`."""

    block: int
    axis: Axis

    def __post_init__(self) -> None:
        if self.axis not in ("h", "w"):
            raise ValueError(f"merge axis must be 'h' or 'w', got {self.axis!r}")


def alternating_schedule(blocks: Sequence[int], grid: Tuple[int, int]) -> List[MergeStep]:
    """One step after each listed block, halving the longer axis (w first on ties)."""
    h, w = grid
    steps = []
    for block in sorted(blocks):
        axis: Axis = "h" if h > w else "w"
        steps.append(MergeStep(block, axis))
        h, w = (merged_length(h), w) if axis == "h" else (h, merged_length(w))
    return steps


def merged_length(length: int) -> int:
    """Length of an axis after one merge step (odd lengths keep their last line)."""
    return (length + 1) // 2


def grid_after(grid: Tuple[int, int], axes: Sequence[Axis]) -> Tuple[int, int]:
    """Grid shape after a sequence of merge steps."""
    h, w = grid
    for axis in axes:
        h, w = (merged_length(h), w) if axis == "h" else (h, merged_length(w))
    return h, w


def _pair_up(t: torch.Tensor, axis: Axis) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a grid tensor (B, H, W, D) into pair members a, b and the odd leftover.

    For axis "w": a, b are (B, H, W // 2, D); leftover is (B, H, W % 2, D).
    """
    dim = 2 if axis == "w" else 1
    length = t.shape[dim]
    even = length - length % 2
    paired, leftover = t.narrow(dim, 0, even), t.narrow(dim, even, length - even)
    shape = list(paired.shape)
    shape[dim : dim + 1] = [even // 2, 2]
    pairs = paired.reshape(shape)
    return pairs.select(dim + 1, 0), pairs.select(dim + 1, 1), leftover


def _pair_sums(t: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Grid tensor (B, H, W, D) -> each pair's sum, the odd leftover kept: (B, H', W', D)."""
    a, b, rest = _pair_up(t, axis)
    return torch.cat([a + b, rest], dim=2 if axis == "w" else 1)


def patch_counts(grid: Tuple[int, int], axes: Sequence[Axis]) -> torch.Tensor:
    """Patches each token of the merged grid covers, after `axes` on `grid`: (H'*W',).

    Sizes depend on the schedule alone, never on the image (what TokenState.size carries).
    """
    counts = torch.ones(1, grid[0], grid[1], 1)
    for axis in axes:
        counts = _pair_sums(counts, axis)
    return counts.flatten()


def cell_means(patches: torch.Tensor, grid: Tuple[int, int], axes: Sequence[Axis]) -> torch.Tensor:
    """Full-grid patch tokens averaged over the cells each token of the merged grid covers.

    patches: (B, H*W, C) on `grid` (H, W), row-major
    axes:    the merge steps, in order
    returns  (B, H'*W', C) on grid_after(grid, axes), row-major (the merged tokens' order)
    """
    sums = _to_grid(patches, grid)  # (B, H, W, C)
    for axis in axes:
        sums = _pair_sums(sums, axis)
    counts = patch_counts(grid, axes).to(device=patches.device, dtype=patches.dtype)  # (H'*W',)
    return sums.flatten(1, 2) / counts.view(1, -1, 1)


def _to_grid(t: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, D) -> (B, H, W, D)."""
    return t.reshape(t.shape[0], grid[0], grid[1], t.shape[-1])


def merge_tokens(
    state: TokenState, axis: Axis, importance: torch.Tensor, alpha: torch.Tensor
) -> TokenState:
    """Apply one asymmetric merge step.

    importance: (B, H*W) attention the patch tokens received (any scale; it is
                normalised here to mean 1 over the patches).
    alpha:      scalar weight of importance against log-size.
    """
    p, (h, w) = state.num_prefix, state.grid
    prefix, patches = state.x[:, :p], state.x[:, p:]
    sizes = state.sizes()
    prefix_size, patch_size = sizes[:, :p], sizes[:, p:]

    rel_importance = importance / importance.mean(dim=1, keepdim=True).clamp_min(1e-12)
    logit = patch_size.log() + alpha * rel_importance.unsqueeze(-1)  # (B, HW, 1)

    xa, xb, x_rest = _pair_up(_to_grid(patches, (h, w)), axis)
    la, lb, _ = _pair_up(_to_grid(logit, (h, w)), axis)

    weight_a = torch.sigmoid(la - lb)  # softmax over the pair, first member
    fused = xb + weight_a.to(xa.dtype) * (xa - xb)
    merged = torch.cat([fused, x_rest], dim=2 if axis == "w" else 1)
    merged_size = _pair_sums(_to_grid(patch_size, (h, w)), axis)

    new_grid = grid_after((h, w), [axis])
    x = torch.cat([prefix, merged.flatten(1, 2)], dim=1)
    size = torch.cat([prefix_size, merged_size.flatten(1, 2)], dim=1)
    pos = None if state.pos is None else merge_positions(state.pos, patch_size, (h, w), axis)
    return TokenState(x=x, size=size, grid=new_grid, num_prefix=p, pos=pos)


def merge_positions(pos: torch.Tensor, patch_size: torch.Tensor, grid: Tuple[int, int], axis: Axis) -> torch.Tensor:
    """Coordinates (1, H*W, 2) after one step: each pair's size-weighted mean, the centre of its cells.

    patch_size: (1, H*W, 1) patches each token covers (merges are image-independent).
    """
    weight = patch_size[:1].to(pos.dtype)
    sums = _pair_sums(_to_grid(pos * weight, grid), axis)
    counts = _pair_sums(_to_grid(weight, grid), axis)
    return (sums / counts).flatten(1, 2)


class TokenMerge(nn.Module):
    """The merge steps of one block, with a learnable importance weight per step."""

    def __init__(self, axes: Sequence[Axis], alpha_init: float = 1.0) -> None:
        super().__init__()
        self.axes: List[Axis] = list(axes)
        self.alpha = nn.Parameter(torch.full((len(self.axes),), float(alpha_init)))

    def forward(self, state: TokenState, importance: torch.Tensor) -> TokenState:
        for i, axis in enumerate(self.axes):
            grid_before = state.grid
            state = merge_tokens(state, axis, importance, self.alpha[i])
            if i + 1 < len(self.axes):  # a second step in this block uses the pair means
                importance = merge_importance(importance, grid_before, axis)
        return state

    def extra_repr(self) -> str:
        return f"axes={self.axes}"


def merge_importance(importance: torch.Tensor, grid: Tuple[int, int], axis: Axis) -> torch.Tensor:
    """Importance (B, H*W) of the tokens after one step on `grid`: the mean of each pair."""
    a, b, rest = _pair_up(_to_grid(importance.unsqueeze(-1), grid), axis)
    joined = torch.cat([(a + b) / 2, rest], dim=2 if axis == "w" else 1)
    return joined.flatten(1, 2).squeeze(-1)


def unmerge(features: torch.Tensor, grid: Tuple[int, int], axes: Sequence[Axis]) -> torch.Tensor:
    """Copy merged tokens back onto the cells they came from.

    features: (B, C, H', W') as returned by a merged model's grid features
    grid:     (H, W) the patch grid before any merge
    axes:     the merge steps applied, in order
    returns   (B, C, H, W)
    """
    grids = [tuple(grid)]
    for axis in axes:
        grids.append(grid_after(grids[-1], [axis]))
    if tuple(features.shape[-2:]) != grids[-1]:
        raise ValueError(f"features grid {tuple(features.shape[-2:])} does not match {grids[-1]}")
    for axis, (h, w) in zip(reversed(list(axes)), reversed(grids[:-1])):
        dim, length = (-1, w) if axis == "w" else (-2, h)
        index = torch.arange(length, device=features.device) // 2
        features = features.index_select(dim, index)
    return features
