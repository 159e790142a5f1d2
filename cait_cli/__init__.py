"""cait: compress timm Vision Transformers with ATME token merging and CDCP channel pruning.

    import cait_cli
    result = cait_cli.compress("deit_small", target_speedup=1.9, data="/data/imagenet")  # as `cait compress`
    rows = cait_cli.sweep("deit_small", [1.3, 1.6, 1.9], data="/data/imagenet")  # one checkpoint per target
    report = cait_cli.evaluate("deit_small.cait", data="/data/imagenet", baseline="deit_small")
    model = cait_cli.load("deit_small.cait")          # a compressed checkpoint directory
    timm.create_model("hf-hub:ORG/NAME", pretrained=True)  # works once cait_cli is imported
"""
from __future__ import annotations

from .errors import CaitError
from .version import __version__
from .models import registry as _registry  # noqa: F401  (registers cait_vit with timm)
from .models import convnet as _convnet  # noqa: F401  (registers cait_grey_convnet, the reference's teacher)
from .models.loading import LoadedModel, load_model
from .api import compress, evaluate, export, push, sweep  # (the public entry points)
from .pipeline.compress import CompressResult
from .pipeline.reports.sweep import SweepPoint


def load(name: str, weights: str = "pretrained"):
    """Load a compressed checkpoint (or any ViT cait understands) as an nn.Module in eval mode."""
    return load_model(name, weights=weights, require_vit=False).model


__all__ = ["CaitError", "CompressResult", "LoadedModel", "SweepPoint", "compress", "evaluate", "export", "load",
           "load_model", "push", "sweep", "__version__"]
