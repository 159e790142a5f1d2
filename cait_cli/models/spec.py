"""What it takes to rebuild a slimmed CAIT model: the base ViT, widths, merges."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import timm
import torch.nn as nn

from ..errors import CaitError
from ..method.atme import MergeStep
from ..method.model import patch_vit
from ..method.widths import BlockWidths, block_widths, set_widths

ARCHITECTURE = "cait_vit"


@dataclass
class CaitSpec:
    """Architecture of a CAIT model, as stored in config.json's model_args."""

    base_architecture: str
    base_args: Dict[str, Any] = field(default_factory=dict)
    widths: List[BlockWidths] = field(default_factory=list)
    merge_schedule: List[MergeStep] = field(default_factory=list)
    importance: Optional[str] = None  # ATME's token-importance signal; None (older checkpoints): the model's default

    def to_model_args(self) -> Dict[str, Any]:
        return {
            "base_architecture": self.base_architecture,
            "base_args": self.base_args,
            "widths": [[w.qk, w.v, w.mlp] for w in self.widths],
            "merge_schedule": [[s.block, s.axis] for s in self.merge_schedule],
            "importance": self.importance,
        }

    @classmethod
    def from_model_args(cls, args: Dict[str, Any]) -> "CaitSpec":
        try:
            return cls(
                base_architecture=str(args["base_architecture"]),
                base_args=dict(args.get("base_args") or {}),
                widths=[BlockWidths(int(qk), int(v), int(mlp)) for qk, v, mlp in args["widths"]],
                merge_schedule=[MergeStep(int(b), str(a)) for b, a in args.get("merge_schedule", [])],
                importance=args.get("importance"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CaitError(f"config.json model_args is not a valid CAIT architecture ({err})") from err

    @classmethod
    def of(cls, model: nn.Module, base_architecture: str, base_args: Dict[str, Any]) -> "CaitSpec":
        return cls(base_architecture, dict(base_args), block_widths(model), list(model.cait_schedule),
                   model.cait_importance)


def build(spec: CaitSpec, **overrides: Any) -> nn.Module:
    """An untrained model of the spec's architecture (weights come from a checkpoint)."""
    args = {**spec.base_args, **overrides}
    if not timm.is_model(spec.base_architecture):
        raise CaitError(f"unknown base architecture {spec.base_architecture!r} in config.json")
    model = timm.create_model(spec.base_architecture, pretrained=False, **args)
    patch_vit(model, spec.merge_schedule, spec.importance)
    set_widths(model, spec.widths)
    return model
