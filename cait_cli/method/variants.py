"""Compressed copies of a model for speed studies and planning (no training)."""
from __future__ import annotations

import copy
from typing import Sequence

import torch.nn as nn

from .atme import MergeStep
from .cdcp import attach_gates, set_budget
from .model import patch_vit
from .slim import slim


def compressed_variant(model: nn.Module, schedule: Sequence[MergeStep] = (), keep: float = 1.0,
                       multiple: int = 1) -> nn.Module:
    """A slimmed copy of `model`: merges at `schedule`, `keep` of the gated channel MACs.

    Channels are chosen by weight-norm importance under the global budget (what CDCP
    calibration starts from), in widths that are multiples of `multiple`; the original
    model is untouched.
    """
    variant = patch_vit(copy.deepcopy(model), schedule)
    if keep < 1.0:
        attach_gates(variant, multiple)
        set_budget(variant, keep)
        slim(variant)
    return variant.eval()
