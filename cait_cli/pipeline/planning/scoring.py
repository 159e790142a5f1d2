"""How close a plan's untrained compressed model stays to the original: the planner's judge."""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from ...method.atme import MergeStep
from ...method.variants import compressed_variant
from ..training.train import distill_loss, distill_outputs, feature_loss, is_headless
from .plan import ScoreFn

Outputs = Callable[[nn.Module, torch.Tensor], object]  # what a model gives on the batch
Distance = Callable[[object, object], float]  # (compressed model's outputs, original's outputs)


def plan_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int, outputs: Outputs,
               distance: Distance) -> ScoreFn:
    """Score of a plan: `distance` of its untrained compressed model's outputs from the original's.

    The images and the original's outputs are computed at the first call, then reused, and so
    is each plan's score: landing's re-plans shortlist many of the same plans again.
    """
    @functools.cache
    def reference() -> Tuple[torch.Tensor, object]:
        batch = images()
        with torch.inference_mode():
            return batch, outputs(base, batch)

    scores: Dict[Tuple[Tuple[MergeStep, ...], float], float] = {}

    def score(schedule: List[MergeStep], keep: float) -> float:
        key = (tuple(schedule), keep)
        if key not in scores:
            batch, want = reference()
            variant = compressed_variant(base, schedule, keep, multiple)
            with torch.inference_mode():
                scores[key] = distance(outputs(variant, batch), want)
        return scores[key]

    return score


def kl_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int) -> ScoreFn:
    """KL of the plan's logits from the original's (the planner's score); for a headless
    model, which has no logits, the training's feature loss (see `headless_score`)."""
    if is_headless(base):
        return headless_score(base, images, multiple)

    def kl(logits: torch.Tensor, teacher: torch.Tensor) -> float:
        unlabelled = torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
        return float(distill_loss(logits, teacher, unlabelled, 0.0))

    return plan_score(base, images, multiple, lambda model, batch: model(batch), kl)


def headless_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int) -> ScoreFn:
    """Cosine distance of the plan's final tokens (full grid) and pooled feature from the original's."""
    return plan_score(base, images, multiple, distill_outputs, lambda got, want: float(feature_loss(got, want)))

