"""CDCP: consistent dynamic channel gates.

A gate holds one learnable score per channel. Its mask is the hard top-k of the
scores, with a straight-through gradient: every channel, kept or not, receives
the gradient of "switching it on", so a pruned channel can come back while the
search runs (dynamic). One gate serves every head (and query and key together),
so the pruned attention stays a dense multi-head op (consistent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn


class ChannelGate(nn.Module):
    """Hard top-k mask over `channels` with straight-through scores."""

    def __init__(self, channels: int, init_scores: torch.Tensor | None = None, multiple: int = 1) -> None:
        super().__init__()
        if multiple < 1:
            raise ValueError(f"multiple must be at least 1, got {multiple}")
        self.multiple = int(multiple)  # kept counts are multiples of this (or the full width)
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
        return f"channels={self.channels}, keep={self.keep}, multiple={self.multiple}"


class PairedGate(ChannelGate):
    """A gate that keeps channels in pairs: RoPE rotates each pair of q/k channels together, so
    keeping one member without the other would change what the kept one computes.

    partner: (channels,) the index each channel is paired with (an involution without fixed points).
    """

    def __init__(self, channels: int, init_scores: torch.Tensor | None, multiple: int, partner: torch.Tensor) -> None:
        if multiple % 2 or channels % 2:
            raise ValueError(f"a paired gate needs an even width and multiple, got {channels} and {multiple}")
        super().__init__(channels, init_scores, multiple)
        self.register_buffer("partner", partner.to(torch.long), persistent=False)

    def set_keep(self, keep: int) -> None:
        if keep % 2:
            raise ValueError(f"a paired gate keeps an even number of channels, got {keep}")
        super().set_keep(keep)

    def kept_indices(self) -> torch.Tensor:
        """The kept pairs (best summed score first), both members each, sorted."""
        scores, partner = self.scores.detach(), self.partner.to(self.scores.device)
        first = (partner > torch.arange(self.channels, device=partner.device)).nonzero().squeeze(1)
        best = (scores[first] + scores[partner[first]]).topk(self.keep // 2).indices
        return torch.cat([first[best], partner[first[best]]]).sort().values


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to mean 1, so gates of different blocks compare."""
    return scores / scores.abs().mean().clamp_min(1e-12)


def allowed_counts(channels: int, multiple: int) -> List[int]:
    """Kept counts a gate of `channels` may take: multiples of `multiple`, and the full width."""
    return sorted({*range(multiple, channels + 1, multiple), channels})


@dataclass
class RankedGroups:
    """Channel groups of several gates, best relative score first (see `rank_groups`)."""

    floors: List[int]  # kept count of each gate before any group is added
    groups: List[Tuple[int, int, int]]  # (gate, rank within the gate, channels), best first


def rank_groups(scores: Sequence[torch.Tensor], min_fraction: float = 0.125, multiple: int = 1) -> RankedGroups:
    """Order the channel groups of all gates by mean normalised score.

    Scores are normalised to mean 1 within each gate, and channels are ranked by
    that, not by score per MAC: per MAC, one query/key channel (spanning every
    head) always loses to an MLP unit, and the attention collapses to one channel.
    Groups are `multiple` channels (the last one of a gate may be smaller), so kept
    counts stay multiples of it; every gate keeps at least `min_fraction` (and 1).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    floors, valued = [], []
    for gate, vec in enumerate(scores):
        counts = allowed_counts(vec.numel(), multiple)
        floor = next(c for c in counts if c >= max(1, math.ceil(min_fraction * vec.numel())))
        floors.append(floor)
        bounds = torch.tensor([floor] + [c for c in counts if c > floor])
        ranked = normalised(vec.detach().float().cpu()).sort(descending=True).values  # CPU: gates may be on a GPU
        sums = torch.cat([torch.zeros(1), ranked.cumsum(0)])
        means = ((sums[bounds[1:]] - sums[bounds[:-1]]) / (bounds[1:] - bounds[:-1])).tolist()
        sizes = (bounds[1:] - bounds[:-1]).tolist()
        valued += [(mean, gate, rank, size) for rank, (mean, size) in enumerate(zip(means, sizes))]
    valued.sort(key=lambda g: g[0], reverse=True)  # stable: ties keep each gate's order
    return RankedGroups(floors, [(gate, rank, size) for _, gate, rank, size in valued])


def spend_budget(ranked: RankedGroups, channel_costs: Sequence[float], budget: float) -> List[int]:
    """Kept count per gate: groups taken best first while their cost fits `budget`.

    A gate's groups are taken in its own score order, so a skipped group blocks the
    gate's later (worse) groups.
    """
    keeps = list(ranked.floors)
    spent = sum(k * c for k, c in zip(keeps, channel_costs))
    next_rank = [0] * len(keeps)
    for gate, rank, size in ranked.groups:
        cost = channel_costs[gate] * size
        if rank == next_rank[gate] and spent + cost <= budget:
            keeps[gate] += size
            spent += cost
            next_rank[gate] += 1
    return keeps


def allocate_keep(
    scores: Sequence[torch.Tensor], channel_costs: Sequence[float], budget: float,
    min_fraction: float = 0.125, multiple: int = 1,
) -> List[int]:
    """Global budget: spend `budget` MACs on the channels with the best relative score.

    scores:        one score vector per gate (higher is more important)
    channel_costs: cost (MACs) of one channel of each gate
    budget:        total cost the kept channels may spend
    min_fraction:  every gate keeps at least this fraction of its channels (and 1)
    multiple:      kept counts are multiples of this (or a gate's full width)
    returns        kept count per gate
    """
    return spend_budget(rank_groups(scores, min_fraction, multiple), channel_costs, budget)
