"""The planner: an ATME schedule and a CDCP budget that reach a target speedup.

Speed is predicted from a latency table measured on this device (latency.py),
not from FLOPs. Among the plans predicted to reach the target, the planner keeps
those that prune the fewest channels and, when it can see data, picks the one
whose untrained compressed model stays closest to the original (a score the
caller supplies, e.g. KL divergence on a calibration batch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..errors import CaitError
from ..method.atme import MergeStep, alternating_schedule
from ..method.model import tokens_per_block
from .latency import LatencyTable

ScoreFn = Callable[[List[MergeStep], float], float]
METHODS = ("cait", "atme", "cdcp")


@dataclass
class PlanConfig:
    target: float
    margin: float = 1.03  # plan this much above the target: the measurement must still clear it
    min_keep: float = 0.25  # never keep fewer channels than this fraction
    max_scored: int = 10  # candidates whose quality score is computed
    merge: bool = True  # may use ATME (False: CDCP alone, an ablation)
    prune: bool = True  # may use CDCP (False: ATME alone, an ablation)

    @classmethod
    def for_method(cls, method: str, target: float, **kwargs) -> "PlanConfig":
        """Config for "cait" (both parts), "atme" or "cdcp" (one part alone)."""
        if method not in METHODS:
            raise CaitError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        return cls(target, merge=method != "cdcp", prune=method != "atme", **kwargs)


@dataclass
class Plan:
    """What the compression will do, and how fast the planner thinks it will be."""

    schedule: List[MergeStep]
    keep: float  # fraction of the gated channels' MACs kept by CDCP
    predicted_speedup: float
    tokens: List[Tuple[int, int]] = field(default_factory=list)  # per block: into attention, into MLP
    score: Optional[float] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["schedule"] = [[s.block, s.axis] for s in self.schedule]
        return out


def candidate_schedules(depth: int, grid: Tuple[int, int]) -> List[List[MergeStep]]:
    """Merge schedules worth considering: 0 to 4 alternating steps, evenly spaced."""
    found = {()}
    for steps in range(1, 5):
        for first in range(1, depth):
            for gap in range(1, depth):
                blocks = tuple(first + gap * i for i in range(steps))
                if blocks[-1] < depth:
                    found.add(blocks)
                if steps == 1:
                    break
    schedules = [alternating_schedule(blocks, grid) for blocks in sorted(found)]
    return [s for s in schedules if min(_final_grid(grid, s)) >= 1]


def _final_grid(grid: Tuple[int, int], schedule: Sequence[MergeStep]) -> Tuple[int, int]:
    from ..method.atme import grid_after
    return grid_after(grid, [s.axis for s in schedule])


class SpeedModel:
    """Predicted latency of a model under a plan, from a measured table."""

    def __init__(self, model: nn.Module, table: LatencyTable) -> None:
        self.grid = tuple(model.patch_embed.grid_size)
        self.prefix, self.depth = model.num_prefix_tokens, len(model.blocks)
        self.table = table
        self.baseline_ms = self.latency([], 1.0)

    def latency(self, schedule: Sequence[MergeStep], keep: float) -> float:
        counts = tokens_per_block(self.grid, self.prefix, self.depth, schedule)
        blocks = sum(self.table.attn(n_in, keep) + self.table.mlp(n_out, keep) for n_in, n_out in counts)
        merges = sum(self.table.merge(counts[step.block][0]) for step in schedule)
        return self.table.fixed_ms + blocks + merges

    def speedup(self, schedule: Sequence[MergeStep], keep: float) -> float:
        return self.baseline_ms / self.latency(schedule, keep)

    def solve_keep(self, schedule: Sequence[MergeStep], goal: float, min_keep: float) -> Optional[float]:
        """Largest keep fraction whose predicted speedup reaches `goal`, or None."""
        if self.speedup(schedule, 1.0) >= goal:
            return 1.0
        if self.speedup(schedule, min_keep) < goal:
            return None
        low, high = min_keep, 1.0
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if self.speedup(schedule, mid) >= goal else (low, mid)
        return low


def make_plan(model: nn.Module, table: LatencyTable, cfg: PlanConfig, score: Optional[ScoreFn] = None) -> Plan:
    """The best plan predicted to reach cfg.target (times the margin)."""
    if cfg.target < 1.0:
        raise CaitError(f"--target-speedup must be at least 1.0, got {cfg.target}")
    speed = SpeedModel(model, table)
    schedules = candidate_schedules(speed.depth, speed.grid) if cfg.merge else [[]]
    min_keep = cfg.min_keep if cfg.prune else 1.0
    goal = cfg.target * cfg.margin
    feasible = []
    for schedule in schedules:
        keep = speed.solve_keep(schedule, goal, min_keep)
        if keep is not None:
            overshoot = speed.speedup(schedule, keep) / goal - 1
            feasible.append((round(overshoot, 2), -round(keep, 3), schedule))
    if not feasible:
        best = max(speed.speedup(s, min_keep) for s in schedules)
        raise CaitError(f"a {cfg.target:g}x speedup is beyond what this model can reach on this device "
                        f"(about {best / cfg.margin:.2f}x at most)")
    # compress no more than needed, then prune as few channels as possible
    feasible.sort(key=lambda c: (c[0], c[1], len(c[2])))
    shortlist = [(-neg_keep, s) for _, neg_keep, s in feasible[: cfg.max_scored]]
    scored = [(score(list(s), k) if score else 0.0, k, s) for k, s in shortlist]
    best_score, keep, schedule = min(scored, key=lambda c: c[0])
    return Plan(list(schedule), keep, speed.speedup(schedule, keep),
                tokens_per_block(speed.grid, speed.prefix, speed.depth, schedule),
                best_score if score else None)


def max_speedup(model: nn.Module, table: LatencyTable, min_keep: float = 0.25) -> float:
    speed = SpeedModel(model, table)
    return max(speed.speedup(s, min_keep) for s in candidate_schedules(speed.depth, speed.grid))


def describe_plan(plan: Plan) -> str:
    merges = ", ".join(f"after block {s.block} ({s.axis})" for s in plan.schedule) or "none"
    tokens = " ".join(str(n_out) for _, n_out in plan.tokens)
    return (f"plan: merges {merges}; tokens per block {tokens}; keep {plan.keep:.0%} of the gated "
            f"channel MACs; predicted speedup {plan.predicted_speedup:.2f}x")
