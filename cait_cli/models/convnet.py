"""A small convnet classifier of grey images, registered with timm so cait loads it as any model.

It is the bundled reference's teacher (`examples/reference_training/teacher.safetensors`, 91.2% on
Fashion-MNIST, trained by `examples/teacher.py`): a convnet learns such images in a few CPU epochs,
far faster than a ViT, and then teaches one (`cait compress --teacher`, DeiT's recipe). With a
config.json naming `cait_grey_convnet` beside its weights it loads as timm's local models do.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs

ARCHITECTURE = "cait_grey_convnet"


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class GreyConvNet(nn.Module):
    """(B, C, H, W) normalised images -> (B, num_classes) logits, from the first (grey) channel at half size.

    It reads the ViT's own 56x56 inputs pooled to 28x28, so teacher and student see the same image;
    feature maps 28 -> 14 -> 7, then global average pooling.
    """

    def __init__(self, width: int = 32, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> None:
        super().__init__()  # (in_chans and timm's other keywords: only the first channel is read)
        self.num_classes = num_classes
        self.features = nn.Sequential(
            conv_bn(1, width), conv_bn(width, width), nn.MaxPool2d(2),              # 28 -> 14
            conv_bn(width, 2 * width), conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x[:, :1], 2)  # the grey channel at half size: (B, 1, H/2, W/2)
        return self.head(self.features(x))


default_cfgs = generate_default_cfgs({f"{ARCHITECTURE}.untrained": {
    "num_classes": 10, "input_size": (3, 56, 56), "mean": (0.286,) * 3, "std": (0.353,) * 3, "crop_pct": 1.0,
    "interpolation": "bilinear", "first_conv": "features.0.0", "classifier": "head"}})


@register_model
def cait_grey_convnet(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """GreyConvNet through timm's builder: pretrained weights from a local folder or the Hub."""
    return build_model_with_cfg(GreyConvNet, ARCHITECTURE, pretrained, **kwargs)
