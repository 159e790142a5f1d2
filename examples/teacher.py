"""A small convnet teacher for the reference ViT (DeiT's recipe: distil from a convnet).

A convnet learns Fashion-MNIST in a few CPU epochs (91.2% test top-1 after 6 here), far faster than a
ViT trained from scratch; its hard labels then guide the ViT (`train_reference.py --teacher`).
It sees the ViT's own augmented 56x56 inputs, pooled to 28x28, so both agree on the image.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cait_cli.atomic import atomic_file


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvTeacher(nn.Module):
    """(B, 3, 56, 56) normalised images -> (B, 10) logits; 28 -> 14 -> 7 feature maps."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, width), conv_bn(width, width), nn.MaxPool2d(2),              # 28 -> 14
            conv_bn(width, 2 * width), conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x[:, :1], 2)  # the grey channel at 28x28
        return self.head(self.features(x))


def train_teacher(batches: Callable[[int], Iterator], steps_per_epoch: int, epochs: int,
                  log: Callable[[str], None]) -> ConvTeacher:
    """batches(epoch) yields (inputs, labels); SGD with Nesterov momentum and a cosine schedule."""
    teacher = ConvTeacher()
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = steps_per_epoch * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    start = time.time()
    for epoch in range(epochs):
        teacher.train()
        for x, y in batches(epoch):
            loss = F.cross_entropy(teacher(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"teacher epoch {epoch}: loss {loss.item():.4f} {time.time() - start:.0f}s")
    return teacher.eval()


def save_teacher(teacher: ConvTeacher, path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp))


def load_teacher(path: Path) -> ConvTeacher:
    teacher = ConvTeacher()
    teacher.load_state_dict(load_file(str(path)))
    return teacher.eval()
