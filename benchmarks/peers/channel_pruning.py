"""Structured channel pruning with the `torch-pruning` package (Fang et al., CVPR 2023), as a peer.

The field's standard tool: a dependency graph finds the coupled channels of a timm
ViT (embedding width, per-head q/k/v widths, MLP hidden units), an L2 magnitude
criterion ranks them, and the same fraction is removed everywhere (its default
uniform pruning). The classifier's output stays whole. The result is a plain timm
ViT with smaller layers; tokens are untouched, so it keeps the 2-D grid.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers.attention import Attention


def prune_channels(model: nn.Module, ratio: float, input_size: tuple) -> nn.Module:
    """A copy of the timm ViT `model` with `ratio` of its channels removed."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    example = torch.randn(1, *input_size, device=next(pruned.parameters()).device)
    attentions = [m for m in pruned.modules() if isinstance(m, Attention)]
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=[pruned.get_classifier()], num_heads={m.qkv: m.num_heads for m in attentions},
        prune_head_dims=True, prune_num_heads=False, round_to=2,
        unwrapped_parameters=_unwrapped(pruned))
    pruner.step()
    for attn in attentions:  # timm reshapes by these; the pruner changed the layers under them
        attn.num_heads = pruner.num_heads[attn.qkv]
        attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        attn.attn_dim = attn.num_heads * attn.head_dim
    return pruned


def _unwrapped(model: nn.Module) -> list:
    """Token and position parameters, pruned along their last (embedding) dimension."""
    names = ("cls_token", "dist_token", "reg_token", "pos_embed")
    return [(getattr(model, n), -1) for n in names if isinstance(getattr(model, n, None), nn.Parameter)]
