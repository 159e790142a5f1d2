"""CDCP calibration: learn channel scores with ATME active, annealing to the budget.

The kept fraction of the gated MACs falls linearly from 1 to the plan's budget
over the first `anneal` share of the steps; at every step the budget is shared
out again across all gates by their current scores, so a channel pruned earlier
comes back if its score has risen (dynamic pruning).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch.nn as nn

from ...method.atme import MergeStep
from ...method.cdcp import attach_gates, set_budget
from ...method.model import patch_vit


def gated_student(base: nn.Module, schedule: Sequence[MergeStep], multiple: int = 1,
                  importance: Optional[str] = None) -> nn.Module:
    """A copy of the original with the plan's merges and full-width CDCP gates (widths in `multiple`),
    tokens scored by `importance` (see patch_vit; None: the model's default)."""
    student = patch_vit(copy.deepcopy(base), schedule, importance)
    attach_gates(student, multiple)
    return student


def budget_at(step: int, steps: int, keep: float, anneal: float = 0.7) -> float:
    """Kept fraction of gated MACs at `step` (1.0 at the start, `keep` from anneal*steps on)."""
    ramp = max(1, int(anneal * steps))
    return 1.0 - (1.0 - keep) * min(1.0, (step + 1) / ramp)


def apply_budget(student: nn.Module, step: int, steps: int, keep: float) -> float:
    fraction = budget_at(step, steps, keep) if steps > 0 else keep
    set_budget(student, fraction)
    return fraction
