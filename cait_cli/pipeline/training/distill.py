"""What the student learns from its teacher's logits and, optionally, from its tokens (issue 39).

Logits, by kind: soft (KL to the teacher's probabilities, at temperature 1 unless given: at T the
teacher's and student's logits are divided by T and the KL multiplied by T^2, Hinton's scaling that
keeps its gradients' size), hard (cross-entropy to the teacher's top-1 class, DeiT's hard-label
distillation) or both (the mean of the two, so the distillation keeps the same weight against the
labels' cross-entropy whichever the kind).

Tokens (token distillation, weight > 0): ATME keeps a 2-D grid, so each merged token of the student
covers known cells of the full patch grid. The teacher's final tokens, averaged over those cells,
are what the student's final tokens learn: 1 - cosine, after the final norm. Cosine, not MSE: an
average of tokens is shorter than the tokens it averages, which MSE would teach the student to
copy; and 1 - cosine means the same for any width or norm scale (as the headless feature loss).
Prefix tokens (class, distillation, registers) never merge and are compared as they are.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...method.atme import Axis, cell_means
from ...method.model import is_cait
from ..measuring.measure import logits_of

DISTILL_KINDS = ("soft", "hard", "both")
LOGITS_LOSSES = {"soft": "kl_logits", "hard": "ce_teacher_top1", "both": "kl_logits+ce_teacher_top1"}


class WithTokens(NamedTuple):
    """Logits and the final tokens on the student's merged grid (token distillation)."""

    logits: torch.Tensor  # (B, K)
    tokens: torch.Tensor  # (B, P + H'*W', C), after the final norm


def kl_per_image(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) at temperature 1 of each image (B,); logits (B, K)."""
    return F.kl_div(student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1),
                    log_target=True, reduction="none").sum(-1)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 x KL(teacher || student) of the logits divided by T, batch mean; logits (B, K)."""
    return temperature ** 2 * kl_per_image(student_logits / temperature, teacher_logits / temperature).mean()


def hard_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the teacher's top-1 class; logits (B, K)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(-1))


def logits_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                temperature: float = 1.0) -> torch.Tensor:
    """The teacher's logits taught by `kind` (DISTILL_KINDS): soft (at `temperature`), hard, or the mean of both."""
    if kind == "soft":
        return soft_loss(student_logits, teacher_logits, temperature)
    if kind == "hard":
        return hard_loss(student_logits, teacher_logits)
    if kind == "both":
        return (soft_loss(student_logits, teacher_logits, temperature) + hard_loss(student_logits, teacher_logits)) / 2
    raise ValueError(f"distillation kind must be one of {DISTILL_KINDS}, got {kind!r}")


def cosine_distance(tokens: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Mean over all tokens of 1 - cosine; (..., C) each."""
    return 1 - F.cosine_similarity(tokens.float(), want.float(), dim=-1).mean()


def merged_tokens(tokens: torch.Tensor, num_prefix: int, grid: Tuple[int, int], axes: Sequence[Axis]) -> torch.Tensor:
    """A full-grid model's tokens (B, P + H*W, C) on the merged grid `axes` leave: (B, P + H'*W', C).

    Prefix tokens as they are; each merged cell the mean of the patch tokens it covers.
    """
    patches = cell_means(tokens[:, num_prefix:].float(), grid, axes)
    return torch.cat([tokens[:, :num_prefix].float(), patches], dim=1)


def merge_axes(model: nn.Module) -> List[Axis]:
    """The merge steps' axes of a CAIT model, in order ([] for a model that does not merge)."""
    return [step.axis for step in getattr(model, "cait_schedule", [])]


def logits_and_tokens(model: nn.Module, images: torch.Tensor, axes: Sequence[Axis]) -> WithTokens:
    """Logits and final tokens on the merged grid of `axes`: a CAIT model's own (they are already
    there), a full-grid ViT's averaged onto it."""
    tokens = model.forward_features(images)  # (B, P + H*W, C), or (B, P + H'*W', C) if it merges
    logits = logits_of(model.forward_head(tokens))
    if is_cait(model):
        return WithTokens(logits, tokens)
    grid = tuple(model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:])))
    return WithTokens(logits, merged_tokens(tokens, model.num_prefix_tokens, grid, axes))
