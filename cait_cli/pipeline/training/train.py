"""One training loop for CDCP calibration and ATME-aware fine-tuning.

The student learns from its teacher, the original model unless another is given: its
logits taught soft (KL at temperature 1, the default), hard (cross-entropy to the teacher's
top-1) or both (distill.py), plus cross-entropy where labels exist (label -1 means
unlabelled), plus, optionally, the teacher's final tokens averaged onto the student's merged
grid (token distillation, distill.py). A headless model (num_classes=0: DINOv2, SigLIP towers)
has no logits; it learns the original's final tokens on the full patch grid and its pooled
feature (cosine). Batches are indexed by step (batches.StepBatches), so a resumed run sees
exactly the batches it would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...method.atme import Axis
from ...method.model import is_cait
from ..measuring.measure import is_headless, logits_of
from .distill import LOGITS_LOSSES, WithTokens, cosine_distance, logits_and_tokens, logits_loss

Features = Tuple[torch.Tensor, torch.Tensor]  # final tokens on the full grid (B, P + H*W, C), pooled (B, C)
# what distillation compares: logits (B, K); WithTokens (token distillation); Features if headless
Outputs = Union[torch.Tensor, WithTokens, Features]

LOGITS_LOSS = LOGITS_LOSSES["soft"]  # KL on logits at temperature 1 (+ cross-entropy where labels are used)
FEATURE_LOSS = "cosine_tokens_pooled"  # 1 - cosine on the full-grid final tokens, + on the pooled feature


@dataclass
class TrainConfig:
    steps: int
    lr: float = 1e-4
    score_lr: float = 2e-2  # CDCP scores move faster than weights
    merge_lr: Optional[float] = None  # ATME's merge weights (alpha); None: the weights' lr
    weight_decay: float = 0.05
    warmup_steps: int = 0
    amp: bool = False
    ce_weight: float = 1.0
    distill: str = "soft"  # how the teacher's logits teach: distill.DISTILL_KINDS
    token_weight: float = 0.0  # weight of token distillation on the merged grid; 0: off
    temperature: float = 1.0  # of soft distillation (distill.soft_loss)
    before: int = 0  # steps the run trained before this phase: its batches and lr schedule go on from there
    schedule_steps: Optional[int] = None  # steps the lr schedule spans from the run's start; None: this phase's

    @property
    def loss(self) -> "Loss":
        return Loss(self.distill, self.ce_weight, self.token_weight, self.temperature)


@dataclass(frozen=True)
class Loss:
    """What the student is taught with (TrainConfig.loss): the logits' `kind` (distill.DISTILL_KINDS), soft
    at `temperature`, plus ce_weight x CE on labelled images, plus token_weight x the tokens' distance."""

    kind: str = "soft"
    ce_weight: float = 1.0
    token_weight: float = 0.0
    temperature: float = 1.0


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 loss: Loss = Loss()) -> torch.Tensor:
    """The teacher's logits taught by loss.kind (soft: KL at loss.temperature), plus CE on labelled images."""
    total = logits_loss(student_logits, teacher_logits, loss.kind, loss.temperature)
    labelled = labels >= 0
    if loss.ce_weight > 0 and labelled.any():
        total = total + loss.ce_weight * F.cross_entropy(student_logits[labelled].float(), labels[labelled])
    return total


def feature_loss(student: Features, teacher: Features) -> torch.Tensor:
    """Mean cosine distance of the final tokens (each grid cell) plus that of the pooled feature."""
    (tokens, pooled), (want_tokens, want_pooled) = student, teacher
    return cosine_distance(tokens, want_tokens) + cosine_distance(pooled, want_pooled)


def objective(student: Outputs, teacher: Outputs, labels: torch.Tensor, loss: Loss = Loss()) -> torch.Tensor:
    """The distillation loss for what `distill_outputs` gave: feature loss if headless, else the logits'
    (loss.kind, + CE), plus loss.token_weight x the tokens' cosine distance when they were given."""
    if isinstance(student, WithTokens):
        return (distill_loss(student.logits, teacher.logits, labels, loss)
                + loss.token_weight * cosine_distance(student.tokens, teacher.tokens))
    if isinstance(student, torch.Tensor):
        return distill_loss(student, teacher, labels, loss)
    return feature_loss(student, teacher)


def loss_name(model: nn.Module, kind: str = "soft") -> str:
    """Which loss distillation from `model` uses (for the report)."""
    return FEATURE_LOSS if is_headless(model) else LOGITS_LOSSES[kind]


def distill_outputs(model: nn.Module, images: torch.Tensor, tokens_on: Optional[Sequence[Axis]] = None) -> Outputs:
    """What distillation compares: logits, or for a headless model its Features.

    tokens_on: the student's merge axes, for token distillation: WithTokens, the logits and the final
    tokens on that merged grid (see distill.logits_and_tokens); None: logits only.
    """
    if not is_headless(model):
        return logits_of(model(images)) if tokens_on is None else logits_and_tokens(model, images, tokens_on)
    if is_cait(model):  # merged tokens unmerged onto the grid the original's tokens sit on
        return model.forward_full_tokens(images)
    tokens = model.forward_features(images)  # (B, P + H*W, C)
    return tokens, model.forward_head(tokens, pre_logits=True)


def teach(teacher: nn.Module, images: torch.Tensor) -> Outputs:
    """The teacher's outputs: a LogitsOnly (compiled or not) gives them as it is, a model through distill_outputs."""
    return teacher(images) if getattr(teacher, "gives_outputs", False) else distill_outputs(teacher, images)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    scores, alphas, decay, no_decay = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".scores"):
            scores.append(param)
        elif name.endswith(".alpha"):
            alphas.append(param)
        elif param.ndim <= 1 or "pos_embed" in name or "token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}]
    if alphas:
        groups.append({"params": alphas, "weight_decay": 0.0, "lr": cfg.lr if cfg.merge_lr is None else cfg.merge_lr})
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "lr": cfg.score_lr})
    return torch.optim.AdamW(groups, fused=_all_on_cuda(scores + alphas + decay + no_decay) or None)


def _all_on_cuda(params: list) -> bool:
    """Whether AdamW can take its fused kernels: on an H100 they made a fine-tuning step of
    DeiT-S 1.8x faster than the default foreach ones (benchmarks/results/gpu_h100.md)."""
    return bool(params) and all(p.is_cuda for p in params)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero, over the phase's steps, or from the run's start over
    cfg.schedule_steps (step: the phase's; cfg.before steps came before it)."""
    step, steps = step + cfg.before, cfg.schedule_steps or cfg.steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_step(student: nn.Module, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> float:
    for group, base in zip(optimizer.param_groups, _base_lrs(optimizer)):
        group["lr"] = base * lr_factor(step, cfg)
    device_type = images.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.amp and device_type == "cuda"):
        with torch.no_grad():
            teacher_out = teach(teacher, images)
        loss = objective(student(images), teacher_out, labels, cfg.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), 5.0)
    optimizer.step()
    return float(loss.detach())


def _base_lrs(optimizer: torch.optim.Optimizer) -> list:
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    return [group["base_lr"] for group in optimizer.param_groups]


class LogitsOnly(nn.Module):
    """Wrap a model so it returns what distillation compares (`distill_outputs`): one logits
    tensor (training-mode tuples averaged), WithTokens when `tokens_on` gives the student's merge
    axes (token distillation), or a headless model's tokens and pooled feature."""

    gives_outputs = True  # train_step calls it as it is (torch.compile's wrapper passes this through)

    def __init__(self, model: nn.Module, tokens_on: Optional[Sequence[Axis]] = None) -> None:
        super().__init__()
        self.model = model
        self.tokens_on = None if tokens_on is None else list(tokens_on)

    def forward(self, x: torch.Tensor) -> Outputs:
        return distill_outputs(self.model, x, self.tokens_on)
