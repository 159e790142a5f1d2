"""The planner: an ATME schedule and a CDCP budget that land on a target speedup.

Speed is predicted from a latency table measured on this device (latency.py),
not from FLOPs, for the widths CDCP would keep: the budget is shared out across
blocks as calibration starts it (weight-norm scores, widths in the channel
multiple), and each block half is looked up at its own width and token count.
Plans aim a little above the target and must stay under a ceiling: a plan that
overshoots pays in accuracy for speed nobody asked for. Among the plans predicted
to land, the planner shortlists a few at every CDCP budget, from merging alone to
pruning much and merging late, and, when it can see data, picks the one whose
untrained compressed model stays closest to the original (a score the caller
supplies, e.g. KL divergence on a calibration batch, image by image). Plans whose
score is within its noise of the best are ties, and a tie goes to the plan that
merges latest: trained with the same recipe, later merges with more pruning were
the more accurate (plan_choice_2.5x_cpu.md), which the untrained score cannot see.
Without data it takes the plan that prunes the fewest channels and merges the least.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...errors import CaitError
from ...method.atme import MergeStep, alternating_schedule, grid_after
from ...method.cdcp import WidthAllocator, weight_norm_scores
from ...method.cost import BlockShape, block_shapes
from ...method.base import tokens_per_block
from .latency import LatencyTable

# A plan's distance from the original: one value per scoring image (B,), or a single value (no noise estimate)
ScoreFn = Callable[[List[MergeStep], float], "float | torch.Tensor"]
Candidate = Tuple[float, float, List[MergeStep]]  # predicted speedup, keep, schedule
Widths = List[Tuple[int, int]]  # per block: kept attention width per head, kept MLP hidden units
METHODS = ("cait", "atme", "cdcp")
# The band a measured speedup must land in, as factors of the target.
BAND = (0.97, 1.08)
# The narrower band a quick landing measurement must hit: the final, longer measurement
# scatters by a few per cent on a busy CPU, so landing near the band's edge is not landing.
LANDING_BAND = (0.99, 1.06)
# Plans whose mean per-image score is within this many standard errors of the best plan's (paired, on
# the same images) are ties: the planner scores on one batch, and its top candidates differed by less
# than that batch's noise (plan_scores_cpu.md).
TIE_ERRORS = 2.0


@dataclass
class PlanConfig:
    target: float
    margin: float = 1.02  # aim this much above the target, inside the band
    ceiling: float = BAND[1]  # plans predicted above target x ceiling overshoot
    min_keep: float = 0.25  # never keep fewer channels than this fraction
    max_keep: float = 1.0  # never keep more: below 1.0, CDCP must prune at least 1 - max_keep
    max_scored: int = 10  # candidates whose quality score is computed
    merge: bool = True  # may use ATME (False: CDCP alone, an ablation)
    prune: bool = True  # may use CDCP (False: ATME alone, an ablation)
    multiple: int = 1  # kept widths are multiples of this

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

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Plan":
        """The Plan `to_dict` gave (run.json, or sent from rank 0)."""
        return cls([MergeStep(b, a) for b, a in data["schedule"]], data["keep"], data["predicted_speedup"],
                   [tuple(t) for t in data.get("tokens", [])], data.get("score"))


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
    return grid_after(grid, [s.axis for s in schedule])


@dataclass
class Attempt:
    """One slimmed model measured while landing."""

    plan: Plan  # its predicted_speedup: as the planner chose it, corrected by the measurements before
    predicted: float  # by the latency table alone, for the student's actual widths (its learned scores chose them)
    measured: float
    widths: List[Tuple[int, int]] = field(default_factory=list)  # per block: kept q/k width per head, MLP units

    def to_dict(self) -> Dict[str, Any]:
        return {"plan": self.plan.to_dict(), "predicted": self.predicted, "measured": self.measured,
                "widths": [list(w) for w in self.widths]}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Attempt":
        return cls(Plan.from_dict(data["plan"]), data["predicted"], data["measured"],
                   [(qk, mlp) for qk, mlp in data.get("widths", [])])


@dataclass
class Observation:
    """A slimmed model measured while landing: its plan, what the table predicted, what was measured."""

    schedule: List[MergeStep]
    keep: float
    predicted: float  # by the table alone, for the widths the model really kept
    measured: float

    @property
    def factor(self) -> float:
        return self.measured / self.predicted


NEARBY = 0.02  # |log predicted ratio| at which a measurement of another schedule counts half as much


class SpeedModel:
    """Predicted latency of a model under a plan, from a measured table, corrected by measurements.

    Each landing measurement (observe) corrects the predictions near it: plans with the same
    merge schedule take the factor measured / predicted of the nearest measured budget; other
    schedules a mean of all factors weighted by how close their predictions are. So a schedule
    measured too slow is predicted too slow from then on, and channel pruning on top of it is
    what the next plan reaches for, instead of the same plan again.
    """

    def __init__(self, model: nn.Module, table: LatencyTable, multiple: int = 1) -> None:
        self.grid = tuple(model.patch_embed.grid_size)
        self.prefix, self.depth = model.num_prefix_tokens, len(model.blocks)
        self.table = table
        first = block_shapes(model)[0]  # full widths (of a timm ViT or Eva, or a CAIT model)
        self.dim, self.heads, self.head_dim, self.hidden = first.dim, first.heads, first.qk, first.mlp
        self.mlp_matrices = first.mlp_matrices
        self.allocator = WidthAllocator([weight_norm_scores(b) for b in model.blocks], multiple)
        self.baseline_ms = table.baseline_ms or self.latency([], 1.0)  # the original, as measured
        self.observations: List[Observation] = []

    def observe(self, schedule: Sequence[MergeStep], keep: float, predicted: float, measured: float) -> None:
        self.observations.append(Observation(list(schedule), keep, predicted, measured))

    def correction(self, schedule: Sequence[MergeStep], keep: float, predicted: float) -> float:
        """The factor measurements say the table's `predicted` speedup of this plan is off by."""
        same = [o for o in self.observations if o.schedule == list(schedule)]
        if same:
            return min(same, key=lambda o: abs(o.keep - keep)).factor
        if not self.observations:
            return 1.0
        weights = [1.0 / (NEARBY + abs(math.log(predicted / o.predicted))) for o in self.observations]
        logs = [math.log(o.factor) for o in self.observations]
        return math.exp(sum(w * f for w, f in zip(weights, logs)) / sum(weights))

    def shapes(self, schedule: Sequence[MergeStep]) -> List[BlockShape]:
        """Full-width block shapes with the token counts of `schedule`."""
        return [BlockShape(n_in, n_out, self.dim, self.heads, self.head_dim, self.head_dim, self.hidden,
                           self.mlp_matrices)
                for n_in, n_out in tokens_per_block(self.grid, self.prefix, self.depth, schedule)]

    def widths(self, schedule: Sequence[MergeStep], keep: float) -> Widths:
        """The widths CDCP's budget `keep` starts from (weight-norm scores)."""
        if keep >= 1.0:
            return [(self.head_dim, self.hidden)] * self.depth
        return self.allocator.widths(self.shapes(schedule), keep)

    def latency_of(self, schedule: Sequence[MergeStep], widths: Widths) -> float:
        """Milliseconds per image of the model slimmed to `widths`, merging at `schedule`."""
        counts = tokens_per_block(self.grid, self.prefix, self.depth, schedule)
        return self.table.predict(counts, widths, [step.block for step in schedule])

    def latency(self, schedule: Sequence[MergeStep], keep: float) -> float:
        return self.latency_of(schedule, self.widths(schedule, keep))

    def speedup_of(self, schedule: Sequence[MergeStep], widths: Widths) -> float:
        return self.baseline_ms / self.latency_of(schedule, widths)

    def speedup(self, schedule: Sequence[MergeStep], keep: float) -> float:
        """Predicted speedup of a plan, corrected by the measurements observed so far."""
        predicted = self.baseline_ms / self.latency(schedule, keep)
        return predicted * self.correction(schedule, keep, predicted)

    def solve_keep(self, schedule: Sequence[MergeStep], goal: float, min_keep: float,
                   max_keep: float = 1.0) -> Optional[float]:
        """Largest keep fraction, at most max_keep, whose predicted speedup reaches `goal`, or None."""
        if self.speedup(schedule, max_keep) >= goal:
            return max_keep
        if self.speedup(schedule, min_keep) < goal:
            return None
        low, high = min_keep, max_keep
        for _ in range(16):
            mid = (low + high) / 2
            low, high = (mid, high) if self.speedup(schedule, mid) >= goal else (low, mid)
        return low


def make_plan(model: nn.Module, table: LatencyTable, cfg: PlanConfig, score: Optional[ScoreFn] = None,
              speed: Optional[SpeedModel] = None) -> Plan:
    """The best plan predicted to land between cfg.target x margin and cfg.target x ceiling."""
    if cfg.target < 1.0:
        raise CaitError(f"--target-speedup must be at least 1.0, got {cfg.target}")
    speed = speed or SpeedModel(model, table, cfg.multiple)
    schedules = _schedules(speed, cfg)
    min_keep, max_keep = _keep_range(cfg)
    goal = cfg.target * cfg.margin
    feasible = []
    for schedule in schedules:
        keep = speed.solve_keep(schedule, goal, min_keep, max_keep)
        if keep is not None:
            predicted = speed.speedup(schedule, keep)
            feasible.append((predicted, keep, schedule))
    if not feasible:
        raise beyond_reach(f"a {cfg.target:g}x speedup is", fastest(model, table, cfg, speed), cfg)
    # a plan that overshoots is never preferred over one that lands
    landing = [c for c in feasible if c[0] <= cfg.target * cfg.ceiling]
    if not landing:
        landing = [min(feasible, key=lambda c: c[0])]
    if score is None:
        predicted, keep, schedule = min(landing, key=_least_change)
        return Plan(list(schedule), keep, predicted, tokens_per_block(speed.grid, speed.prefix, speed.depth, schedule))
    scored = [(_per_image(score, s, k), p, k, s) for p, k, s in shortlist_by_budget(landing, cfg.max_scored)]
    best = min(scored, key=lambda c: float(c[0].mean()))[0]
    values, predicted, keep, schedule = min((c for c in scored if within_noise(c[0], best)),
                                            key=lambda c: (_latest_merging(c[3]), float(c[0].mean())))
    return Plan(list(schedule), keep, predicted, tokens_per_block(speed.grid, speed.prefix, speed.depth, schedule),
                float(values.mean()))


def _per_image(score: ScoreFn, schedule: Sequence[MergeStep], keep: float) -> torch.Tensor:
    return torch.as_tensor(score(list(schedule), keep), dtype=torch.float64).flatten().cpu()


def within_noise(values: torch.Tensor, best: torch.Tensor, errors: float = TIE_ERRORS) -> bool:
    """Whether a plan's per-image scores (B,) are a tie with the best plan's: their mean paired difference
    is at most `errors` standard errors. A single value has no noise estimate: only the best ties with itself."""
    if values.numel() < 2 or values.numel() != best.numel():
        return bool(values.mean() <= best.mean())
    difference = values - best
    return bool(difference.mean() <= errors * difference.std() / math.sqrt(difference.numel()))


def _latest_merging(schedule: Sequence[MergeStep]) -> tuple:
    """Sort key: the latest first merge first (no merge latest of all), then the fewest merges."""
    first = schedule[0].block if schedule else math.inf
    return -first, len(schedule)


def _schedules(speed: SpeedModel, cfg: PlanConfig) -> List[List[MergeStep]]:
    return candidate_schedules(speed.depth, speed.grid) if cfg.merge else [[]]


def _keep_range(cfg: PlanConfig) -> Tuple[float, float]:
    """The kept share of the gated channel MACs a plan may take: (least, most)."""
    return (cfg.min_keep, cfg.max_keep) if cfg.prune else (1.0, 1.0)


def fastest(model: nn.Module, table: LatencyTable, cfg: PlanConfig, speed: Optional[SpeedModel] = None) -> float:
    """The speedup predicted for the fastest plan cfg allows (its method, its channel floor): make_plan
    refuses a target whose cfg.target x cfg.margin lies above it (cfg.target itself does not matter)."""
    speed = speed or SpeedModel(model, table, cfg.multiple)
    return max(speed.speedup(s, _keep_range(cfg)[0]) for s in _schedules(speed, cfg))


def beyond_reach(what: str, best: float, cfg: PlanConfig) -> CaitError:
    """The one line that refuses targets above `best` ("a 3x speedup is", "2.5x and 3x are")."""
    min_keep = _keep_range(cfg)[0]
    floor = f" keeping at least {min_keep:.0%} of the channels" if min_keep > PlanConfig.min_keep else ""
    return CaitError(f"{what} beyond what this model can reach on this device{floor} (about {best:.2f}x at most)")


def _least_change(candidate: Candidate) -> tuple:
    """Prune as few channels as possible, then merge as little and as late as possible."""
    _, keep, schedule = candidate
    return -round(keep, 3), _merge_order(schedule)


def _merge_order(schedule: Sequence[MergeStep]) -> tuple:
    """Fewer merges first, then later ones: every block after a merge sees a coarser grid."""
    return len(schedule), [-step.block for step in schedule]


def shortlist_by_budget(candidates: Sequence[Candidate], size: int) -> List[Candidate]:
    """Up to `size` candidates spread over CDCP budgets (keep bands 10% wide), in turns.

    Ranking only the plans that prune least would hide the trade the score should
    judge: on the bundled reference, plans that merge later and prune 25-35% stay
    closer to the original than merging alone (benchmarks/results/plan_scores_cpu.md).
    Within a band, fewer and later merges come first.
    """
    bands: Dict[int, List[Candidate]] = {}
    for candidate in candidates:
        bands.setdefault(min(int(candidate[1] * 10), 10), []).append(candidate)
    queues = [sorted(bands[b], key=lambda c: (_merge_order(c[2]), c[0])) for b in sorted(bands, reverse=True)]
    picked: List[Candidate] = []
    for turn in range(max(len(q) for q in queues)):
        picked += [q[turn] for q in queues if turn < len(q)]
    return picked[:size]


def describe_plan(plan: Plan) -> str:
    merges = ", ".join(f"after block {s.block} ({s.axis})" for s in plan.schedule) or "none"
    tokens = " ".join(str(n_out) for _, n_out in plan.tokens)
    return (f"plan: merges {merges}; tokens per block {tokens}; keep {plan.keep:.0%} of the gated "
            f"channel MACs; predicted speedup {plan.predicted_speedup:.2f}x")
