"""The segmentation protocol of benchmarks/segment.py: frozen backbone, light head, mIoU.

The backbone gives patch features of a few blocks on the full patch grid (CAIT and
the channel-pruned ViT through timm's forward_intermediates, ToMe through its
traced merges); the head is BatchNorm, a 3x3 conv to 96 channels, ReLU and a 1x1
conv to the classes, on the patch grid, upsampled bilinearly to the pixels. Only
the head trains (cross-entropy per pixel, AdamW), the same steps, batches and
initialisation for every backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.peers.tome import traced_intermediates

HIDDEN = 96


class FrozenBackbone(nn.Module):
    """Patch features of the blocks `indices`, concatenated: (B, sum C, H / patch, W / patch)."""

    def __init__(self, model: nn.Module, indices: Sequence[int], traced_tome: bool = False) -> None:
        super().__init__()
        self.model, self.indices, self.traced_tome = model.eval().requires_grad_(False), list(indices), traced_tome

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.traced_tome:
            maps = traced_intermediates(self.model, images, self.indices)
        else:
            maps = self.model.forward_intermediates(images, indices=self.indices, norm=True, intermediates_only=True)
        return torch.cat(maps, dim=1)


class SegHead(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, HIDDEN, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(HIDDEN, classes, 1))

    def forward(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """features (B, C, h, w) -> logits (B, classes, *size)."""
        return F.interpolate(self.layers(features), size=tuple(size), mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Backbone + head, end to end (what the speed measurement times)."""

    def __init__(self, backbone: FrozenBackbone, head: SegHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), images.shape[-2:])


@dataclass
class SceneSet:
    """Scenes (N, S, S) uint8 and their masks (N, S, S) int64, normalised as the backbone expects."""

    scenes: np.ndarray
    masks: np.ndarray
    mean: float
    std: float

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S) float32 and masks (B, S, S) int64."""
        grey = torch.from_numpy(self.scenes[np.asarray(index)]).float().div_(255)
        images = ((grey - self.mean) / self.std).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return images, self.masks_of(index)

    def masks_of(self, index: Sequence[int]) -> torch.Tensor:
        """Masks (B, S, S) int64."""
        return torch.from_numpy(self.masks[np.asarray(index)])


@dataclass
class HeadConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


def features_of(backbone: FrozenBackbone, scenes: SceneSet, batch_size: int = 50) -> torch.Tensor:
    """The frozen backbone's features of every scene, computed once: (N, C, h, w).

    The backbone is frozen and the scenes are not augmented, so the head's training
    batches can be gathered from these instead of running the backbone at every step.
    """
    with torch.no_grad():
        return torch.cat([backbone(scenes.batch(range(start, min(start + batch_size, len(scenes))))[0])
                          for start in range(0, len(scenes), batch_size)])


def fit_head(features: torch.Tensor, classes: int, train: SceneSet, cfg: HeadConfig) -> SegHead:
    """A head trained on cached features (N, C, h, w) of `train`'s scenes; the same batches and init per seed."""
    torch.manual_seed(cfg.seed)
    head = SegHead(features.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, cfg.steps))
    order = np.random.default_rng(cfg.seed)
    head.train()
    for _ in range(cfg.steps):
        index = order.integers(len(train), size=min(cfg.batch_size, len(train)))
        masks = train.masks_of(index)
        loss = F.cross_entropy(head(features[torch.from_numpy(index)], masks.shape[-2:]), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval()


@dataclass
class SegScore:
    miou: float
    pixel_accuracy: float
    iou: List[float]  # per class, NaN where a class never occurs nor is predicted


def evaluate(segmenter: Callable[[torch.Tensor], torch.Tensor], test: SceneSet, classes: int,
             batch_size: int = 50) -> SegScore:
    """The score of a segmenter (images -> logits) on the test scenes."""
    return score(lambda start, stop: segmenter(test.batch(range(start, stop))[0]), test, classes, batch_size)


def evaluate_head(head: SegHead, features: torch.Tensor, test: SceneSet, classes: int,
                  batch_size: int = 50) -> SegScore:
    """The same score for a head on cached features (N, C, h, w) of the test scenes (see features_of)."""
    size = test.masks.shape[-2:]
    return score(lambda start, stop: head(features[start:stop], size), test, classes, batch_size)


def score(logits_of: Callable[[int, int], torch.Tensor], test: SceneSet, classes: int, batch_size: int) -> SegScore:
    """mIoU over the classes present in truth or prediction, from one confusion matrix over all test pixels.

    logits_of(start, stop) gives the logits (B, classes, S, S) of test scenes start..stop-1.
    """
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            stop = min(start + batch_size, len(test))
            predicted = logits_of(start, stop).argmax(1)
            masks = test.masks_of(range(start, stop))
            confusion += torch.bincount(masks.flatten() * classes + predicted.flatten(),
                                        minlength=classes * classes).reshape(classes, classes)
    hits = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - hits
    iou = torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, float("nan")))
    return SegScore(float(iou.nanmean()), float(hits.sum() / confusion.sum()), iou.tolist())


def predict(segmenter: Segmenter, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return segmenter(images).argmax(1)
