"""Structured channel pruning with the `torch-pruning` package (Fang et al., CVPR 2023), as a peer.

The field's standard tool: a dependency graph finds the coupled channels of a timm
ViT (embedding width, per-head q/k/v widths, MLP hidden units), an importance
criterion ranks them, and they are removed. Two choices give it four settings, so
the proof can give the peer its best one:

- importance: L2 magnitude of each channel group (its default), or first-order
  Taylor (|weight x gradient|, gradients from a few training batches), which its
  own ViT example uses;
- ranking: the same fraction removed from every layer (uniform, its default), or
  one ranking across all layers (its `global_pruning`), capped at 90% per layer.

The classifier's output stays whole. The result is a plain timm ViT with smaller
layers; tokens are untouched, so it keeps the 2-D grid.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PruneSetting:
    importance: str = "l2"  # "l2" or "taylor"
    global_ranking: bool = False

    @property
    def label(self) -> str:
        return f"{'global' if self.global_ranking else 'uniform'} {'Taylor' if self.importance == 'taylor' else 'L2'}"


SETTINGS = tuple(PruneSetting(i, g) for g in (False, True) for i in ("l2", "taylor"))


def prune_channels(model: nn.Module, ratio: float, input_size: tuple, setting: PruneSetting = PruneSetting(),
                   batches: Optional[Iterable[Batch]] = None) -> nn.Module:
    """A copy of the timm ViT `model` with `ratio` of its channels removed.

    Taylor importance needs `batches` (images, labels): their cross-entropy gradients.
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    example = torch.randn(1, *input_size, device=next(pruned.parameters()).device)
    attentions = [m for m in pruned.modules() if isinstance(m, Attention)]
    importance = tp.importance.GroupTaylorImportance() if setting.importance == "taylor" \
        else tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=importance, pruning_ratio=ratio, global_pruning=setting.global_ranking,
        max_pruning_ratio=0.9, ignored_layers=[pruned.get_classifier()],
        num_heads={m.qkv: m.num_heads for m in attentions}, prune_head_dims=True, prune_num_heads=False,
        round_to=2, unwrapped_parameters=_unwrapped(pruned))
    if setting.importance == "taylor":
        _accumulate_gradients(pruned, batches)
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    for attn in attentions:  # timm reshapes by these; the pruner changed the layers under them
        attn.num_heads = pruner.num_heads[attn.qkv]
        attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        attn.attn_dim = attn.num_heads * attn.head_dim
    return pruned


def _accumulate_gradients(model: nn.Module, batches: Optional[Iterable[Batch]]) -> None:
    if batches is None:
        raise ValueError("Taylor importance needs training batches")
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for images, labels in batches:
        F.cross_entropy(model(images.to(device)), labels.to(device)).backward()


def _unwrapped(model: nn.Module) -> list:
    """Token and position parameters, pruned along their last (embedding) dimension."""
    names = ("cls_token", "dist_token", "reg_token", "pos_embed")
    return [(getattr(model, n), -1) for n in names if isinstance(getattr(model, n, None), nn.Parameter)]
