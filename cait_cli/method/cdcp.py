"""Attach CDCP gates to a CAIT model, score channels, and share out the budget.

Per block: `attn.gate_qk` masks query and key channels (one mask for every head
and for q and k alike), `attn.gate_v` the value channels and the matching input
columns of the output projection, `mlp.gate` the MLP hidden units.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn

from .cost import block_shapes, channel_costs
from .gates import ChannelGate, allocate_keep, normalised


def weight_norm_scores(block: nn.Module) -> Dict[str, torch.Tensor]:
    """Importance of each channel from the weights that produce and consume it."""
    attn, mlp = block.attn, block.mlp
    h = attn.num_heads
    q, k, v = attn.qkv.weight.detach().split([h * attn.qk_dim, h * attn.qk_dim, h * attn.v_dim])
    q_norm = q.view(h, attn.qk_dim, -1).norm(dim=-1)  # (h, qk_dim)
    k_norm = k.view(h, attn.qk_dim, -1).norm(dim=-1)
    v_norm = v.view(h, attn.v_dim, -1).norm(dim=-1)  # (h, v_dim)
    proj_norm = attn.proj.weight.detach().view(-1, h, attn.v_dim).norm(dim=0)  # (h, v_dim)
    fc1_norm = mlp.fc1.weight.detach().norm(dim=1)  # (mlp_dim,)
    fc2_norm = mlp.fc2.weight.detach().norm(dim=0)
    return {
        "qk": normalised((q_norm * k_norm).sum(dim=0)),
        "v": normalised((v_norm * proj_norm).sum(dim=0)),
        "mlp": normalised(fc1_norm * fc2_norm),
    }


def attach_gates(model: nn.Module) -> Dict[str, ChannelGate]:
    """Give every block of a CAIT model full-width gates scored by weight norms."""
    for block in model.blocks:
        scores = weight_norm_scores(block)
        block.attn.gate_qk = ChannelGate(block.attn.qk_dim, scores["qk"]).to(block.attn.qkv.weight.device)
        block.attn.gate_v = ChannelGate(block.attn.v_dim, scores["v"]).to(block.attn.qkv.weight.device)
        block.mlp.gate = ChannelGate(block.mlp.fc1.out_features, scores["mlp"]).to(block.mlp.fc1.weight.device)
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

    A block's query/key and value gates keep the same number of channels: with equal
    head widths attention runs on the fused (flash) kernels, and with unequal ones it
    falls back to a path that was measured 20-30% slower on the CPU. They compete as
    one unit whose score at rank r is the sum of both gates' r-th best scores.
    """
    gates = list(gates_of(model).values())
    if not gates:
        raise ValueError("model has no CDCP gates; call attach_gates first")
    costs = gate_costs(model)
    units, unit_costs = [], []
    for i in range(0, len(gates), 3):  # qk, v, mlp of one block
        qk, v, mlp = gates[i:i + 3]
        paired = normalised(qk.scores.detach()).sort(descending=True).values
        paired = paired + normalised(v.scores.detach()).sort(descending=True).values
        units += [paired, mlp.scores.detach()]
        unit_costs += [costs[i] + costs[i + 1], costs[i + 2]]
    keeps = allocate_keep(units, unit_costs, keep_fraction * full_gated_macs(model))
    for i in range(0, len(gates), 3):
        attn_keep, mlp_keep = keeps[2 * (i // 3)], keeps[2 * (i // 3) + 1]
        gates[i].set_keep(attn_keep)
        gates[i + 1].set_keep(attn_keep)
        gates[i + 2].set_keep(mlp_keep)
    return [g.keep for g in gates]


def set_uniform_keep(model: nn.Module, fraction: float) -> None:
    """Keep the same fraction of channels in every gate (at least 1)."""
    for gate in gates_of(model).values():
        gate.set_keep(max(1, round(fraction * gate.channels)))
