"""Landing on the target: measure the slimmed model and re-plan until it lands.

The planner predicts; only a measurement of the slimmed model on this device says
whether the target was reached. This phase sits between CDCP calibration and
fine-tuning, while the student is still gated and can take another plan.

A measured speedup must land in the band [target x 0.97, target x 1.08]. The
quick landing measurement is held to a narrower band, [0.99, 1.06] x target, so
the final measurement's own noise does not carry a model that only just landed
out of the band. Below it, the next plan asks for more speed; above it, for less
(faster than asked is paid for in accuracy). The next goal is the last one corrected by what the
measurement said (goal x aim / measured); once plans on both sides are known,
it stays strictly between the last goal that was too slow and the last that was
too fast, bisecting when the correction would leave that bracket.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch.nn as nn

from ...errors import CaitError
from ...method.cdcp import gates_of, set_budget
from ...method.model import patch_vit
from ...method.slim import slim
from ..measuring.report import quick_speedup
from .plan import BAND, LANDING_BAND, Plan, SpeedModel, describe_plan, make_plan

if TYPE_CHECKING:
    from ..job import Job

MAX_MEASUREMENTS = 6


@dataclass
class Attempt:
    """One slimmed model measured while landing."""

    plan: Plan
    goal: float  # the speedup the planner was asked for
    predicted: float  # for the student's actual widths (its learned scores chose them)
    measured: float

    def to_dict(self) -> Dict[str, Any]:
        return {"plan": self.plan.to_dict(), "goal": self.goal, "predicted": self.predicted,
                "measured": self.measured}


@dataclass
class Bracket:
    """Goals known to give a model too slow (below the band) or too fast (above it)."""

    too_slow: Optional[float] = None
    too_fast: Optional[float] = None

    def record(self, goal: float, measured: float, low: float) -> None:
        if measured < low:
            self.too_slow = max(goal, self.too_slow or goal)
        else:
            self.too_fast = min(goal, self.too_fast or goal)

    def next_goal(self, goal: float, measured: float, aim: float) -> float:
        """The secant correction, kept strictly inside the bracket (else its midpoint)."""
        guess = goal * aim / measured
        low, high = self.too_slow, self.too_fast
        if low is not None and high is not None:
            if not low < guess < high:
                guess = math.sqrt(low * high)
        elif low is not None and guess <= low:
            guess = low * 1.03
        elif high is not None and guess >= high:
            guess = high / 1.03
        return guess


def band(target: float, factors: tuple[float, float] = BAND) -> tuple[float, float]:
    return target * factors[0], target * factors[1]


def fit_to_target(job: "Job", student: nn.Module, plan: Plan) -> Plan:
    """The plan whose slimmed model measures inside the band around the target.

    Every measurement is kept in job.meta["attempts"]. The gated student takes each
    plan's merge schedule and budget (its learned scores still decide which channels
    go). Leaves the student at the chosen plan.
    """
    if "keep" in job.state:  # resumed during fine-tuning: the widths are already decided
        plan.keep = job.state["keep"]
        _apply(student, plan)
        return plan
    if not job.cfg.replan:
        _apply(student, plan)
        return plan
    target = job.cfg.target_speedup
    low, high = band(target)
    inner_low, inner_high = band(target, LANDING_BAND)
    aim = target * job.cfg.plan_config(target).margin
    speed = SpeedModel(job.base, job.table, job.cfg.channel_multiple)
    attempts: List[Attempt] = []
    bracket, goal = Bracket(), aim
    for _ in range(MAX_MEASUREMENTS):
        attempts.append(_measure(job, student, plan, goal, speed))
        job.progress.message(f"slimmed: measured {attempts[-1].measured:.2f}x against the {target:g}x target "
                             f"(band {low:.2f}-{high:.2f}x)")
        measured = attempts[-1].measured
        if inner_low <= measured <= inner_high:
            break
        bracket.record(goal, measured, inner_low)
        goal = bracket.next_goal(goal, measured, aim)
        next_plan = _replan(job, goal, speed)
        if next_plan is None or _uncompressed(next_plan) or any(_same(next_plan, a.plan) for a in attempts):
            break  # nothing new to try: merge steps or widths are too coarse here
        plan = next_plan
        job.progress.message("re-planned: " + describe_plan(plan))
    chosen = choose(attempts, (inner_low, inner_high), (low, high))
    if chosen is not attempts[-1]:
        _apply(student, chosen.plan)
    if not low <= chosen.measured <= high:
        job.progress.message(_missed_band(chosen, target, low, high, len(attempts)))
    job.meta["attempts"] = [a.to_dict() for a in attempts]
    chosen.plan.predicted_speedup = chosen.predicted
    return chosen.plan


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


def _missed_band(chosen: Attempt, target: float, low: float, high: float, tries: int) -> str:
    side = "above" if chosen.measured > high else "below"
    return (f"could not land in {low:.2f}-{high:.2f}x in {tries} measurements (the next steps of merging or "
            f"pruning are too coarse here); kept the plan measured at {chosen.measured:.2f}x, {side} the band")


def _apply(student: nn.Module, plan: Plan) -> None:
    patch_vit(student, plan.schedule)
    if gates_of(student):
        set_budget(student, plan.keep)


def _measure(job: "Job", student: nn.Module, plan: Plan, goal: float, speed: SpeedModel) -> Attempt:
    _apply(student, plan)
    widths = [(b.attn.gate_qk.keep, b.mlp.gate.keep) for b in student.blocks]
    predicted = speed.speedup_of(plan.schedule, widths)
    measured = quick_speedup(job.base, slim(copy.deepcopy(student)), job.device, job.bench_batch, amp=job.amp)
    return Attempt(copy.deepcopy(plan), goal, predicted, measured)


def _replan(job: "Job", goal: float, speed: SpeedModel) -> Optional[Plan]:
    cfg = job.cfg.plan_config(goal, margin=1.0)
    cfg.ceiling = BAND[1] * job.cfg.target_speedup / goal  # the band is the user's, not the goal's
    try:
        return make_plan(job.base, job.table, cfg, job.score, speed=speed)
    except CaitError:
        return None


def _uncompressed(plan: Plan) -> bool:
    """A plan that changes nothing: backing off that far can only come from measurement noise."""
    return not plan.schedule and plan.keep >= 1.0


def _same(a: Plan, b: Plan) -> bool:
    return a.schedule == b.schedule and abs(a.keep - b.keep) < 1e-3
