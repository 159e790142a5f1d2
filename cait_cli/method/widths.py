"""The kept widths of a CAIT model's blocks: read them off a (slimmed) model, or build blocks of
given widths for a checkpoint's weights to fill in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn as nn

from ..errors import CaitError


@dataclass(frozen=True)
class BlockWidths:
    """Kept channels of one block: per-head q/k and v widths, MLP hidden width."""

    qk: int
    v: int
    mlp: int


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
