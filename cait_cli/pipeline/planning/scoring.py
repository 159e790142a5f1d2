"""How close a plan's untrained compressed model stays to the original: the planner's judge."""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from ...method.atme import MergeStep
from ...method.variants import compressed_variant
from ..training.distill import kl_per_image
from ..training.train import distill_outputs, feature_loss, is_headless
from .plan import ScoreFn

Outputs = Callable[[nn.Module, torch.Tensor], object]  # what a model gives on the batch
Distance = Callable[[object, object], object]  # (compressed model's outputs, original's): per image (B,) or one value


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

    scores: Dict[Tuple[Tuple[MergeStep, ...], float], object] = {}

    def score(schedule: List[MergeStep], keep: float) -> object:
        key = (tuple(schedule), keep)
        if key not in scores:
            batch, want = reference()
            variant = compressed_variant(base, schedule, keep, multiple)
            with torch.inference_mode():
                scores[key] = distance(outputs(variant, batch), want)
        return scores[key]

    return score


def kl_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int) -> ScoreFn:
    """KL of the plan's logits from the original's, image by image (B,): the planner's score is their
    mean, and their spread says which plans tie (plan.within_noise). For a headless model, which has
    no logits, the training's feature loss, one value (see `headless_score`)."""
    if is_headless(base):
        return headless_score(base, images, multiple)
    return plan_score(base, images, multiple, lambda model, batch: model(batch),
                      lambda logits, teacher: kl_per_image(logits, teacher).cpu())


def headless_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int) -> ScoreFn:
    """Cosine distance of the plan's final tokens (full grid) and pooled feature from the original's."""
    return plan_score(base, images, multiple, distill_outputs, lambda got, want: float(feature_loss(got, want)))

