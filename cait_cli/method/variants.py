"""Compressed copies of a model for speed studies and planning (no training)."""
from __future__ import annotations

import copy
from typing import Sequence

import torch.nn as nn

from .atme import MergeStep
from .cdcp import attach_gates, set_uniform_keep
from .model import patch_vit
from .slim import slim


def compressed_variant(model: nn.Module, schedule: Sequence[MergeStep] = (), keep: float = 1.0) -> nn.Module:
    """A slimmed copy of `model`: merges at `schedule`, `keep` of the channels in every gate.

    Channels are chosen by weight-norm importance; the original model is untouched.
    """
    variant = patch_vit(copy.deepcopy(model), schedule)
    if keep < 1.0:
        attach_gates(variant)
        set_uniform_keep(variant, keep)
        slim(variant)
    return variant.eval()
