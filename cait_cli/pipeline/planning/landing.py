"""Landing on the target: measure the slimmed model and re-plan until it lands.

The planner predicts; only a measurement of the slimmed model on this device, under
the runtime that will serve it, says whether the target was reached. This phase sits
between CDCP calibration and fine-tuning, while the student is still gated and can
take another plan.

A measured speedup must land in the band [target x 0.97, target x 1.08]. The
quick landing measurement is held to a narrower band, [0.99, 1.06] x target, so
the final measurement's own noise does not carry a model that only just landed
out of the band. Every measurement corrects the planner's speed model for the plans
near it (plan.SpeedModel.observe), and the next plan is solved for the same aim on
the corrected predictions: a merge schedule measured too slow gets a little channel
pruning on top, the fine knob between two merge schedules. Landing stops when a
measurement lands, or when the corrected planner proposes a plan already measured
(no plan in between exists at the channel multiple).
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional, Tuple

import torch.nn as nn

from ...errors import CaitError
from ...method.cdcp import gates_of, set_budget
from ...method.model import patch_vit
from ...method.slim import slim
from ..measuring.report import quick_speedup
from .plan import BAND, LANDING_BAND, Attempt, Plan, SpeedModel, describe_plan, make_plan

if TYPE_CHECKING:
    from ..job import Job

MAX_MEASUREMENTS = 6


def band(target: float, factors: tuple[float, float] = BAND) -> tuple[float, float]:
    return target * factors[0], target * factors[1]


def fit_to_target(job: "Job", student: nn.Module, plan: Plan) -> Tuple[Plan, List[Attempt]]:
    """The plan whose slimmed model measures inside the band around the target, and every
    measurement taken on the way.

    The gated student takes each plan's merge schedule and budget (its learned scores still
    decide which channels go). Leaves the student at the chosen plan.
    """
    if not job.cfg.replan:
        apply_plan(student, plan)
        return plan, []
    target = job.cfg.target_speedup
    low, high = band(target)
    inner = band(target, LANDING_BAND)
    aim = target * job.cfg.plan_config(target).margin
    speed = SpeedModel(job.base, job.table, job.cfg.channel_multiple)
    attempts: List[Attempt] = []
    for _ in range(MAX_MEASUREMENTS):
        attempts.append(_measure(job, student, plan, speed, inner))
        job.progress.message(f"slimmed: measured {attempts[-1].measured:.2f}x against the {target:g}x target "
                             f"(band {low:.2f}-{high:.2f}x)")
        if inner[0] <= attempts[-1].measured <= inner[1]:
            break
        speed.observe(plan.schedule, plan.keep, attempts[-1].predicted, attempts[-1].measured)
        next_plan = _replan(job, aim, speed)
        if next_plan is None or _uncompressed(next_plan) or _measured_before(student, next_plan, attempts):
            break  # the corrected planner has nothing new: no plan in between at this multiple
        plan = next_plan
        job.progress.message("re-planned: " + describe_plan(plan))
    chosen = choose(attempts, inner, (low, high))
    apply_plan(student, chosen.plan)  # whatever was measured or asked last, the student ends at the chosen plan
    if not low <= chosen.measured <= high:
        job.progress.message(_missed_band(chosen, target, low, high, len(attempts), job.cfg.channel_multiple))
    return replace(chosen.plan, predicted_speedup=chosen.predicted), attempts  # (the attempt keeps its own)


def choose(attempts: List[Attempt], inner: tuple[float, float], outer: tuple[float, float]) -> Attempt:
    """The attempt that landed in the inner band; else the one nearest its centre inside the outer
    band; else the slowest that reached the band's floor; else the fastest."""
    landed = [a for a in attempts if inner[0] <= a.measured <= inner[1]]
    if landed:
        return landed[-1]
    centre = math.sqrt(inner[0] * inner[1])
    low, high = outer
    nearly = [a for a in attempts if low <= a.measured <= high]
    if nearly:
        return min(nearly, key=lambda a: abs(math.log(a.measured / centre)))
    reached = [a for a in attempts if a.measured >= low]
    if reached:
        return min(reached, key=lambda a: a.measured)
    return max(attempts, key=lambda a: a.measured)


def _missed_band(chosen: Attempt, target: float, low: float, high: float, tries: int, multiple: int) -> str:
    side = "above" if chosen.measured > high else "below"
    return (f"could not land in {low:.2f}-{high:.2f}x in {tries} measurements (no plan between the measured ones "
            f"exists at channel multiple {multiple}); kept the plan measured at {chosen.measured:.2f}x, "
            f"{side} the band")


def apply_plan(student: nn.Module, plan: Plan) -> None:
    """The gated student at `plan`: its merges, and its gates at its budget."""
    patch_vit(student, plan.schedule)
    if gates_of(student):
        set_budget(student, plan.keep)


def _widths(student: nn.Module) -> List[Tuple[int, int]]:
    return [(b.attn.gate_qk.keep, b.mlp.gate.keep) for b in student.blocks]


def _measured_before(student: nn.Module, plan: Plan, attempts: List[Attempt]) -> bool:
    """Whether `plan` slims the student to a model measured already (same merges, same kept widths:
    a budget that differs by less than one channel step keeps the same channels). Asks a copy:
    the student itself is left as it is."""
    widths = _widths_under(student, plan)
    return any(a.plan.schedule == plan.schedule and a.widths == widths for a in attempts)


def _widths_under(student: nn.Module, plan: Plan) -> List[Tuple[int, int]]:
    """The kept widths `plan` would give the student (its learned scores choose them)."""
    probe = copy.deepcopy(student)
    apply_plan(probe, plan)
    return _widths(probe)


def _measure(job: "Job", student: nn.Module, plan: Plan, speed: SpeedModel, inner: tuple[float, float]) -> Attempt:
    apply_plan(student, plan)
    widths = _widths(student)
    predicted = speed.speedup_of(plan.schedule, widths)
    slimmed = slim(copy.deepcopy(student))
    measured = quick_speedup(job.base, slimmed, job.device, job.bench_batch, amp=job.amp, forwards=job.forwards,
                             band=inner)
    job.forwards.forget(slimmed)
    return Attempt(copy.deepcopy(plan), predicted, measured, widths)


def _replan(job: "Job", goal: float, speed: SpeedModel) -> Optional[Plan]:
    """A plan predicted (corrected) between `goal` and the top of the landing band: a plan measured
    above that band is predicted above it from then on, so it is not proposed again."""
    cfg = job.cfg.plan_config(goal, margin=1.0)
    cfg.ceiling = LANDING_BAND[1] * job.cfg.target_speedup / goal
    try:
        return make_plan(job.base, job.table, cfg, job.score, speed=speed)
    except CaitError:
        return None


def _uncompressed(plan: Plan) -> bool:
    """A plan that changes nothing: backing off that far can only come from measurement noise."""
    return not plan.schedule and plan.keep >= 1.0
