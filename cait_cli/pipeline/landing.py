"""Landing on the target: measure the slimmed model and re-plan until it lands.

The planner predicts; only a measurement of the slimmed model on this device says
whether the target was reached. This phase sits between CDCP calibration and
fine-tuning, while the student is still gated and can take another plan.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch.nn as nn

from ..errors import CaitError
from ..method.cdcp import set_budget
from ..method.model import patch_vit
from ..method.slim import slim
from .plan import Plan, describe_plan, make_plan
from .report import quick_speedup

if TYPE_CHECKING:
    from .compress import Job

# A quick measurement must clear the target by this much, so that the final (longer)
# measurement, taken minutes later on a noisy machine, still does.
REPLAN_MARGIN = 1.02


def fit_to_target(job: "Job", student: nn.Module, plan: Plan) -> Plan:
    """The plan whose slimmed model measures at least the target speedup.

    If the measured speedup misses, the planner is asked for proportionally more and
    the gated student takes the new merge schedule and budget (its learned scores
    still decide which channels go). Leaves the student's gates at the plan's budget.
    """
    if "keep" in job.state:  # resumed during fine-tuning: the widths are already decided
        plan.keep = job.state["keep"]
        set_budget(student, plan.keep)
        return plan
    target = job.cfg.target_speedup
    for _ in range(4 if job.cfg.replan else 0):
        set_budget(student, plan.keep)
        measured = quick_speedup(job.base, slim(copy.deepcopy(student)), job.device, job.bench_batch)
        job.progress.message(f"slimmed: measured {measured:.2f}x against the {target:g}x target")
        if measured >= target * REPLAN_MARGIN:
            break
        goal = plan.predicted_speedup * target * REPLAN_MARGIN / measured
        try:
            new_plan = make_plan(job.base, job.table, job.cfg.plan_config(goal, margin=1.0), job.score)
        except CaitError:
            break  # nothing faster to try; the report says what was reached
        plan = new_plan
        patch_vit(student, plan.schedule)
        job.progress.message("re-planned: " + describe_plan(plan))
    set_budget(student, plan.keep)
    return plan
