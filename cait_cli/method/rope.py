"""Rotary position embeddings (RoPE) at the positions of merged tokens.

timm's axial RoPE (RotaryEmbeddingCat for EVA-02 and the SBB/Naver rope ViTs,
RotaryEmbeddingDinoV3 for DINOv3) rotates each channel pair of a head by
angle = coordinate * frequency, where the coordinate is an affine function of
the patch's row or column index. A merged token sits at the midpoint of the
cells it covers, which is the mean of their coordinates; so the positions
travel with the tokens (TokenState.pos, averaged by size at each merge) and
the sin/cos table is evaluated at whatever (fractional) coordinates arrive.
On an unmerged grid this is timm's own table.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, _build_grid

from ..errors import CaitError

SUPPORTED_ROPES = (RotaryEmbeddingCat, RotaryEmbeddingDinoV3)


class GridRope(nn.Module):
    """RoPE tables of one model at any token coordinates.

    frequencies: (F,) radians per coordinate unit of each band; every axis uses all F,
    so a head of `dim` channels holds dim / 2 rotated pairs = 2 axes x F bands.
    """

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        if not isinstance(rope, SUPPORTED_ROPES):
            raise CaitError(f"cait supports timm's axial RoPE (cat, dinov3), not {type(rope).__name__}")
        if getattr(rope, "aug_active", False):
            raise CaitError("cait does not support RoPE coordinate augmentation (shift/jitter/rescale)")
        self.dim, self.rotate_half = rope.dim, rope.rotate_half
        self.grid_indexing, self.grid_offset = rope.grid_indexing, rope.grid_offset
        self.normalize_coords = rope.normalize_coords
        if isinstance(rope, RotaryEmbeddingDinoV3):
            self.grid_type, self.ref_feat_shape = "centered", None
            frequencies = 2 * math.pi / rope.periods.detach().float().cpu()
        else:
            self.grid_type, self.ref_feat_shape = rope.grid_type, rope.ref_feat_shape
            frequencies = rope.bands.detach().float().cpu()
        self.register_buffer("frequencies", frequencies, persistent=False)
        self._frequency_values = frequencies.tolist()  # to rebuild them in float32 after a cast

    def _apply(self, fn, *args, **kwargs):
        """Moves and casts as any module, but keeps the frequencies in float32: angles in bf16 would be
        off by whole cells at the far side of the grid (timm's rope modules do the same)."""
        module = super()._apply(fn, *args, **kwargs)
        if self.frequencies.dtype != torch.float32:
            self.frequencies = torch.tensor(self._frequency_values, device=self.frequencies.device)
        return module

    def coords(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Coordinates of the cells of an unmerged (H, W) grid, as timm's rope sees them: (1, H*W, 2)."""
        coords = _build_grid(list(grid), grid_type=self.grid_type, ref_feat_shape=self.ref_feat_shape,
                             grid_offset=self.grid_offset, grid_indexing=self.grid_indexing,
                             normalize_coords=self.normalize_coords, device=self.frequencies.device)  # (H, W, 2)
        return coords.flatten(0, 1).unsqueeze(0)  # built on the device: no host copy (CUDA graphs capture it)

    def table(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates (1, N, 2) -> concatenated [sin, cos] table (N, 2 * dim) in timm's channel layout."""
        angles = (coords[0].unsqueeze(-1) * self.frequencies).flatten(1)  # (N, 2 * F) = (N, dim / 2)
        return torch.cat([_layout(angles.sin(), self.rotate_half), _layout(angles.cos(), self.rotate_half)], -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid_type={self.grid_type!r}, rotate_half={self.rotate_half}"


def _layout(values: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Per-pair values (N, dim / 2) -> per-channel (N, dim): [f0 f1 .. f0 f1 ..] or [f0 f0 f1 f1 ..]."""
    return torch.cat([values, values], dim=-1) if rotate_half else values.repeat_interleave(2, dim=-1)



def pair_partner(dim: int, rotate_half: bool) -> torch.Tensor:
    """Index of the channel each of a head's `dim` channels is rotated with: (dim,).

    The layouts survive slimming by whole pairs: kept pairs P give [P, P + dim/2] (half) or
    [2p, 2p + 1, ...] (interleaved), which is again that layout at the smaller width.
    """
    channels = torch.arange(dim)
    if rotate_half:  # pairs (i, i + dim / 2)
        return (channels + dim // 2) % dim
    return channels ^ 1  # interleaved pairs (2i, 2i + 1)
