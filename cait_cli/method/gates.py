"""CDCP: consistent dynamic channel gates.

A gate holds one learnable score per channel. Its mask is the hard top-k of the
scores, with a straight-through gradient: every channel, kept or not, receives
the gradient of "switching it on", so a pruned channel can come back while the
search runs (dynamic). One gate serves every head (and query and key together),
so the pruned attention stays a dense multi-head op (consistent).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn


class ChannelGate(nn.Module):
    """Hard top-k mask over `channels` with straight-through scores."""

    def __init__(self, channels: int, init_scores: torch.Tensor | None = None) -> None:
        super().__init__()
        scores = torch.ones(channels) if init_scores is None else init_scores.detach().float().clone()
        if scores.shape != (channels,):
            raise ValueError(f"init_scores must have shape ({channels},), got {tuple(scores.shape)}")
        self.scores = nn.Parameter(scores)
        self.keep = channels

    @property
    def channels(self) -> int:
        return self.scores.numel()

    def set_keep(self, keep: int) -> None:
        """Set how many channels the mask keeps (at least 1)."""
        if not 1 <= keep <= self.channels:
            raise ValueError(f"keep must be in [1, {self.channels}], got {keep}")
        self.keep = int(keep)

    def kept_indices(self) -> torch.Tensor:
        """Sorted indices of the kept channels."""
        return self.scores.detach().topk(self.keep).indices.sort().values

    def forward(self) -> torch.Tensor:
        """Mask (channels,): exactly 0/1 in value, identity gradient to the scores."""
        hard = torch.zeros_like(self.scores)
        hard[self.kept_indices()] = 1.0
        return hard + (self.scores - self.scores.detach())  # exactly hard; d/dscores = 1

    def extra_repr(self) -> str:
        return f"channels={self.channels}, keep={self.keep}"


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to mean 1, so gates of different blocks compare."""
    return scores / scores.abs().mean().clamp_min(1e-12)


def allocate_keep(
    scores: Sequence[torch.Tensor], channel_costs: Sequence[float], budget: float,
    min_fraction: float = 0.125,
) -> List[int]:
    """Global budget: spend `budget` MACs on the channels with the best relative score.

    scores:        one score vector per gate (higher is more important)
    channel_costs: cost (MACs) of one channel of each gate
    budget:        total cost the kept channels may spend
    min_fraction:  every gate keeps at least this fraction of its channels (and 1)
    returns        kept count per gate

    Scores are normalised to mean 1 within each gate, and channels are ranked by
    that, not by score per MAC: per MAC, one query/key channel (spanning every
    head) always loses to an MLP unit, and the attention collapses to one channel.
    """
    keeps = [max(1, math.ceil(min_fraction * vec.numel())) for vec in scores]
    spent = sum(k * c for k, c in zip(keeps, channel_costs))
    candidates = []
    for gate, vec in enumerate(scores):
        ordered = normalised(vec.detach().float()).sort(descending=True).values
        candidates.extend((value, gate) for value in ordered[keeps[gate]:].tolist())
    candidates.sort(key=lambda c: c[0], reverse=True)
    for _, gate in candidates:
        cost = channel_costs[gate]
        if spent + cost <= budget:
            keeps[gate] += 1
            spent += cost
    return keeps


