"""Attach CDCP gates to a CAIT model, score channels, and share out the budget.

Per block: `attn.gate_qk` masks query and key channels (one mask for every head
and for q and k alike), `attn.gate_v` the value channels and the matching input
columns of the output projection, `mlp.gate` the MLP hidden units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .cost import BlockShape, block_shapes, channel_costs
from .gates import ChannelGate, normalised, rank_groups, spend_budget
from .model import cait_view


@dataclass
class BlockScores:
    """Channel scores of one block: q/k and v (per head), MLP hidden units."""

    qk: torch.Tensor
    v: torch.Tensor
    mlp: torch.Tensor


def weight_norm_scores(block: nn.Module) -> BlockScores:
    """Importance of each channel from the weights that produce and consume it.

    Works on a CAIT block and on timm's own ViT and Eva blocks (read as CAIT blocks).
    """
    block = cait_view(block)
    attn, mlp = block.attn, block.mlp
    h = attn.num_heads
    qk_dim, v_dim = attn.qk_dim, attn.v_dim
    q, k, v = attn.qkv.weight.detach().split([h * qk_dim, h * qk_dim, h * v_dim])
    q_norm = q.view(h, qk_dim, -1).norm(dim=-1)  # (h, qk_dim)
    k_norm = k.view(h, qk_dim, -1).norm(dim=-1)
    v_norm = v.view(h, v_dim, -1).norm(dim=-1)  # (h, v_dim)
    proj_norm = attn.proj.weight.detach().view(-1, h, v_dim).norm(dim=0)  # (h, v_dim)
    hidden_norm = _hidden_input_norm(mlp)  # (mlp_dim,)
    fc2_norm = mlp.fc2.weight.detach().norm(dim=0)
    return BlockScores(qk=normalised((q_norm * k_norm).sum(dim=0)), v=normalised((v_norm * proj_norm).sum(dim=0)),
                       mlp=normalised(hidden_norm * fc2_norm))


def _hidden_input_norm(mlp: nn.Module) -> torch.Tensor:
    """Product of the row norms of the layers producing each hidden unit (fc1; a GLU's gate and value)."""
    norm = torch.ones(())
    for name in getattr(mlp, "hidden_inputs", ("fc1",)):
        norm = norm * getattr(mlp, name).weight.detach().norm(dim=1).cpu()
    return norm.to(mlp.fc2.weight.device)


def attach_gates(model: nn.Module, multiple: int = 1) -> Dict[str, ChannelGate]:
    """Give every block of a CAIT model full-width gates scored by weight norms.

    multiple: kept widths (per head for q/k and v, MLP hidden units) are multiples of this.
    """
    for block in model.blocks:
        scores = weight_norm_scores(block)
        device = block.attn.qkv.weight.device
        block.attn.gate_qk = block.attn.new_qk_gate(scores.qk, multiple).to(device)  # RoPE: in pairs
        attn_multiple = block.attn.gate_qk.multiple  # q/k and v keep equal widths
        block.attn.gate_v = ChannelGate(block.attn.v_dim, scores.v, attn_multiple).to(device)
        block.mlp.gate = ChannelGate(block.mlp.fc2.in_features, scores.mlp, multiple).to(device)
    return gates_of(model)


def detach_gates(model: nn.Module) -> None:
    for block in model.blocks:
        block.attn.gate_qk = block.attn.gate_v = block.mlp.gate = None


def gates_of(model: nn.Module) -> Dict[str, ChannelGate]:
    """The gates by name ("blocks.3.qk", ...), in block order; empty if none."""
    gates = {}
    for i, block in enumerate(model.blocks):
        for kind, gate in (("qk", block.attn.gate_qk), ("v", block.attn.gate_v), ("mlp", block.mlp.gate)):
            if gate is not None:
                gates[f"blocks.{i}.{kind}"] = gate
    return gates


def gate_costs(model: nn.Module) -> List[float]:
    """Cost of one channel of each gate, in the order of `gates_of`."""
    costs = []
    for shape in block_shapes(model):
        costs.extend(channel_costs(shape))
    return costs


def gated_macs(model: nn.Module) -> float:
    """MACs (per image) that the kept channels of all gates spend."""
    gates = gates_of(model)
    return sum(g.keep * c for g, c in zip(gates.values(), gate_costs(model)))


def full_gated_macs(model: nn.Module) -> float:
    """MACs the gated channels would spend at full width."""
    gates = gates_of(model)
    return sum(g.channels * c for g, c in zip(gates.values(), gate_costs(model)))


def set_budget(model: nn.Module, keep_fraction: float) -> List[int]:
    """Keep the channels (across all blocks) that fit `keep_fraction` of the gated MACs.

    Widths come out as multiples of the gates' `multiple`; see `WidthAllocator`.
    """
    gates = list(gates_of(model).values())
    if not gates:
        raise ValueError("model has no CDCP gates; call attach_gates first")
    per_block = list(zip(*[iter(gates)] * 3))  # (qk, v, mlp) of each block
    scores = [BlockScores(qk.scores, v.scores, mlp.scores) for qk, v, mlp in per_block]
    widths = WidthAllocator(scores, gates[0].multiple).widths(block_shapes(model), keep_fraction)
    for (attn_keep, mlp_keep), (qk, v, mlp) in zip(widths, per_block):
        qk.set_keep(attn_keep)
        v.set_keep(attn_keep)
        mlp.set_keep(mlp_keep)
    return [g.keep for g in gates]


class WidthAllocator:
    """Kept (attention width per head, MLP hidden width) of every block for a MAC budget.

    A block's query/key and value gates keep the same number of channels: with equal
    head widths attention runs on the fused (flash) kernels, and with unequal ones it
    falls back to a path that was measured 20-30% slower on the CPU. They compete as
    one unit whose score at rank r is the sum of both gates' r-th best scores. The
    ranking depends on the scores alone, so it is made once and reused for any budget
    and merge schedule (the planner asks for thousands).
    """

    def __init__(self, scores: Sequence[BlockScores], multiple: int = 1) -> None:
        units = []
        for block in scores:
            paired = normalised(block.qk.detach()).sort(descending=True).values
            units += [paired + normalised(block.v.detach()).sort(descending=True).values, block.mlp.detach()]
        self.ranked = rank_groups(units, multiple=multiple)

    def widths(self, shapes: Sequence[BlockShape], keep_fraction: float) -> List[Tuple[int, int]]:
        """shapes: per block at full width, with the token counts of the merge schedule
        (a channel costs what its tokens cost)."""
        if keep_fraction >= 1.0:
            return [(shape.qk, shape.mlp) for shape in shapes]
        costs, full = [], 0.0
        for shape in shapes:
            qk_cost, v_cost, mlp_cost = channel_costs(shape)
            costs += [qk_cost + v_cost, mlp_cost]
            full += shape.qk * qk_cost + shape.v * v_cost + shape.mlp * mlp_cost
        keeps = spend_budget(self.ranked, costs, keep_fraction * full)
        return list(zip(keeps[0::2], keeps[1::2]))

