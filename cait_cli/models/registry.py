"""Register the CAIT architecture with timm.

After `import cait_cli`, `timm.create_model("hf-hub:ORG/NAME", pretrained=True)` and
`timm.create_model("local-dir:PATH", pretrained=True)` rebuild a compressed model
from its config.json (model_args) and load its model.safetensors; with
`features_only=True, out_indices=...` they give timm's dense feature extractor.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch.nn as nn
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import checkpoint_filter_fn  # resamples pos_embed for img_size=...

from .spec import ARCHITECTURE, CaitSpec, build

# Input keywords timm's builder may add from the pretrained config; they override base_args.
_INPUT_KEYS = ("num_classes", "in_chans", "img_size", "global_pool")


def _build(base_architecture: str, widths: List[List[int]], merge_schedule: List[List[Any]] = (),
           base_args: Dict[str, Any] | None = None, importance: Optional[str] = None, **kwargs: Any) -> nn.Module:
    spec = CaitSpec.from_model_args({
        "base_architecture": base_architecture, "base_args": base_args or {},
        "widths": widths, "merge_schedule": merge_schedule, "importance": importance,
    })
    overrides = {k: v for k, v in kwargs.items() if k in _INPUT_KEYS and v is not None}
    return build(spec, **overrides)


default_cfgs = generate_default_cfgs({f"{ARCHITECTURE}.untrained": {"num_classes": 1000}})


@register_model
def cait_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A ViT compressed by cait: per-block widths and a token merge schedule in model_args.

    `features_only=True` wraps it in timm's FeatureGetterNet, as timm does for its ViTs:
    features come from forward_intermediates, on the full patch grid.
    """
    feature_cfg = {"out_indices": kwargs.pop("out_indices", 3), "feature_cls": "getter"}
    return build_model_with_cfg(_build, ARCHITECTURE, pretrained, feature_cfg=feature_cfg,
                                pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
