"""One training loop for CDCP calibration and ATME-aware fine-tuning.

The student learns from the original model (KL divergence on logits, temperature
1) plus cross-entropy where labels exist (label -1 means unlabelled). Batches are
indexed by step (batches.StepBatches), so a resumed run sees exactly the batches
it would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..measuring.measure import logits_of


@dataclass
class TrainConfig:
    steps: int
    lr: float = 1e-4
    score_lr: float = 2e-2  # CDCP scores move faster than weights
    weight_decay: float = 0.05
    warmup_steps: int = 0
    amp: bool = False
    ce_weight: float = 1.0


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 labels: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """KL(teacher || student) at temperature 1, plus CE on labelled images."""
    kl = F.kl_div(student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1),
                  log_target=True, reduction="batchmean")
    labelled = labels >= 0
    if ce_weight > 0 and labelled.any():
        kl = kl + ce_weight * F.cross_entropy(student_logits[labelled].float(), labels[labelled])
    return kl


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    scores, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".scores"):
            scores.append(param)
        elif param.ndim <= 1 or name.endswith(".alpha") or "pos_embed" in name or "token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "lr": cfg.score_lr})
    return torch.optim.AdamW(groups, fused=_all_on_cuda(scores + decay + no_decay) or None)


def _all_on_cuda(params: list) -> bool:
    """Whether AdamW can take its fused kernels: on an H100 they made a fine-tuning step of
    DeiT-S 1.8x faster than the default foreach ones (benchmarks/results/gpu_h100.md)."""
    return bool(params) and all(p.is_cuda for p in params)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_step(student: nn.Module, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> float:
    for group, base in zip(optimizer.param_groups, _base_lrs(optimizer)):
        group["lr"] = base * lr_factor(step, cfg)
    device_type = images.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.amp and device_type == "cuda"):
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = distill_loss(student(images), teacher_logits, labels, cfg.ce_weight)
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
    """Wrap a model so training-mode tuples become one logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))
