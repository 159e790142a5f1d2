"""How close a plan's untrained compressed model stays to the original: the planner's judge."""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ..method.atme import MergeStep
from ..method.variants import compressed_variant
from .plan import ScoreFn
from .train import distill_loss


def kl_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int) -> ScoreFn:
    """Score of a plan: KL of its untrained compressed model from the original on `images()`.

    The images and the original's logits are computed at the first call, then reused, and so
    is each plan's score: landing's re-plans shortlist many of the same plans again.
    """
    @functools.cache
    def reference() -> Tuple[torch.Tensor, torch.Tensor]:
        batch = images()
        with torch.inference_mode():
            return batch, base(batch)

    scores: Dict[Tuple[Tuple[MergeStep, ...], float], float] = {}

    def score(schedule: List[MergeStep], keep: float) -> float:
        key = (tuple(schedule), keep)
        if key not in scores:
            batch, teacher = reference()
            unlabelled = torch.full((batch.shape[0],), -1, dtype=torch.long, device=batch.device)
            variant = compressed_variant(base, schedule, keep, multiple)
            with torch.inference_mode():
                scores[key] = float(distill_loss(variant(batch), teacher, unlabelled, 0.0))
        return scores[key]

    return score


def feature_distortion(base: nn.Module, variant: nn.Module, batch: torch.Tensor, indices: Sequence[int]) -> float:
    """Mean relative squared error of the variant's full-grid features at `indices` (what a dense head reads)."""
    with torch.inference_mode():
        want = base.forward_intermediates(batch, indices=list(indices), intermediates_only=True)
        got = variant.forward_intermediates(batch, indices=list(indices), intermediates_only=True)
    return sum(float(((g - w) ** 2).mean() / (w ** 2).mean()) for g, w in zip(got, want)) / len(want)
