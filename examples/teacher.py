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

from cait_cli.atomic import atomic_file
from cait_cli.models.convnet import GreyConvNet

ConvTeacher = GreyConvNet  # in the library, so `cait compress --teacher` loads the saved file


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
