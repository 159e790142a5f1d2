"""The cost model: multiply-accumulates of a (CAIT) ViT, counted from its shapes.

Per block with N tokens into attention, N' into the MLP, embed C, h heads and
kept widths d_qk, d_v (per head) and D (MLP hidden):
    q and k  2 N C h d_qk      v     N C h d_v
    Q K^T    N^2 h d_qk        A V   N^2 h d_v      proj  N h d_v C
    MLP      2 N' C D    (3 N' C D for a gated-linear-unit MLP: gate, value and output)
Norms, softmax, GELU and merges are not counted (they are not MACs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch.nn as nn

from .base import token_counts
from .model import cait_view


@dataclass(frozen=True)
class BlockShape:
    """What a block's cost depends on."""

    tokens_in: int
    tokens_out: int
    dim: int
    heads: int
    qk: int
    v: int
    mlp: int
    mlp_matrices: int = 2  # weight matrices per hidden unit: fc1 and fc2, or a GLU's gate, value and fc2


def attention_macs(s: BlockShape) -> int:
    n, hd = s.tokens_in, s.heads
    return 2 * n * s.dim * hd * s.qk + n * s.dim * hd * s.v + n * n * hd * (s.qk + s.v) + n * hd * s.v * s.dim


def mlp_macs(s: BlockShape) -> int:
    return s.mlp_matrices * s.tokens_out * s.dim * s.mlp


def block_macs(s: BlockShape) -> int:
    return attention_macs(s) + mlp_macs(s)


def channel_costs(s: BlockShape) -> Tuple[float, float, float]:
    """MACs that one more q/k channel, v channel and MLP unit cost in this block."""
    n, hd = s.tokens_in, s.heads
    qk = hd * (2 * n * s.dim + n * n)
    v = hd * (n * s.dim + n * n + n * s.dim)
    return float(qk), float(v), float(s.mlp_matrices * s.tokens_out * s.dim)


def block_shapes(model: nn.Module, grid: Optional[Tuple[int, int]] = None) -> List[BlockShape]:
    """Shapes of every block of a timm ViT or Eva, or of a CAIT model."""
    counts = token_counts(model, grid)
    blocks = [cait_view(block) for block in model.blocks]  # unpatched blocks read as CAIT blocks
    return [
        BlockShape(n_in, n_out, block.attn.qkv.in_features, block.attn.num_heads, block.attn.qk_dim,
                   block.attn.v_dim, block.mlp.fc2.in_features, 1 + len(block.mlp.hidden_inputs))
        for (n_in, n_out), block in zip(counts, blocks)
    ]


def model_macs(model: nn.Module, grid: Optional[Tuple[int, int]] = None) -> int:
    """MACs of one image through patch embedding, blocks and classifier."""
    grid = tuple(grid or model.patch_embed.grid_size)
    proj = model.patch_embed.proj  # Conv2d, kernel = stride = patch size
    patch = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] * proj.out_channels
    embed = grid[0] * grid[1] * patch
    blocks = sum(block_macs(s) for s in block_shapes(model, grid))
    return embed + blocks + _head_macs(model)


def _head_macs(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[0].startswith("head"))
