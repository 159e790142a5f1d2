"""Physically slim a gated CAIT model: keep the chosen channels in every head.

qkv rows, proj columns, fc1 rows (a GLU's gate and value rows) and fc2 columns are sliced;
the gates go away.
The softmax scale is left as it was, so the slim model computes what the gated
model computed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cdcp import detach_gates, gates_of


def _sliced(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _per_head(index: torch.Tensor, heads: int, width: int, offset: int = 0) -> torch.Tensor:
    """Indices `index` (within one head of `width`) repeated in every head, shifted by offset."""
    starts = torch.arange(heads, device=index.device).unsqueeze(1) * width
    return (starts + index.unsqueeze(0)).flatten() + offset


def slim_block(block: nn.Module) -> None:
    """Slice one gated block to its kept channels, in place."""
    attn, mlp = block.attn, block.mlp
    h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
    keep_qk, keep_v = attn.gate_qk.kept_indices(), attn.gate_v.kept_indices()
    rows = torch.cat([
        _per_head(keep_qk, h, qk),
        _per_head(keep_qk, h, qk, offset=h * qk),
        _per_head(keep_v, h, v, offset=2 * h * qk),
    ])
    attn.qkv = _sliced(attn.qkv, rows=rows)
    attn.proj = _sliced(attn.proj, cols=_per_head(keep_v, h, v))
    attn.keep_qk_channels(keep_qk)
    attn.qk_dim, attn.v_dim = keep_qk.numel(), keep_v.numel()
    keep_mlp = mlp.gate.kept_indices()
    for name in mlp.hidden_inputs:  # fc1, or a GLU's gate and value rows together
        setattr(mlp, name, _sliced(getattr(mlp, name), rows=keep_mlp))
    mlp.fc2 = _sliced(mlp.fc2, cols=keep_mlp)


def slim(model: nn.Module) -> nn.Module:
    """Slice every block of a gated CAIT model to its kept channels and drop the gates."""
    if not gates_of(model):
        raise ValueError("model has no CDCP gates to slim by")
    for block in model.blocks:
        slim_block(block)
    detach_gates(model)
    return model
