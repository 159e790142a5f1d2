"""Which plans does the planner's score like? Every landing plan at a target, scored.

For each merge schedule and each cap on the CDCP budget (keep at most 100%, 90%, ...),
the planner's solver finds the budget that lands on the target; every distinct plan
predicted to land is built untrained (weight-norm channels, as calibration starts) and
scored two ways on the same calibration images: the planner's KL from the original's
logits, and the relative error of the full-grid features a dense head reads (blocks at
1/4, 2/4, 3/4 and 4/4 of the depth). Then it shows which plan the planner picks with
the shortlist of the fewest-pruned plans (v0.1-0.3) and with the shortlist spread over
budgets. No timing: the latency table comes from the cache, or is measured first.

    python -m benchmarks.plan_scores --target 1.9 --out benchmarks/results/plan_scores_cpu.md
"""
from __future__ import annotations

import time
from typing import Callable, List, Sequence

import torch
import torch.nn as nn

from benchmarks import harness
from cait_cli.models.loading import load_model
from cait_cli.pipeline.data.sources import open_data, resolve_data_config
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.planning.plan import (
    PlanConfig,
    ScoreFn,
    SpeedModel,
    candidate_schedules,
    make_plan,
)
from cait_cli.pipeline.planning.scoring import kl_score, plan_score

KEEP_CAPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def feature_score(base: nn.Module, images: Callable[[], torch.Tensor], multiple: int,
                  indices: Sequence[int]) -> ScoreFn:
    """Mean relative squared error of the plan's full-grid features at `indices` (what a dense head reads)."""
    def features(model: nn.Module, batch: torch.Tensor) -> List[torch.Tensor]:
        return model.forward_intermediates(batch, indices=list(indices), intermediates_only=True)

    def error(got: List[torch.Tensor], want: List[torch.Tensor]) -> float:
        return sum(float(((g - w) ** 2).mean() / (w ** 2).mean()) for g, w in zip(got, want)) / len(want)

    return plan_score(base, images, multiple, features, error)


def landing_plans(speed: SpeedModel, cfg: PlanConfig) -> list:
    """(schedule, keep, predicted speedup) for every distinct plan predicted to land on cfg.target.

    Caps that solve to the same budget (to 0.1%) give one plan, with the keep of the first
    cap: 100%, as the planner solves it, so the scores computed here serve the planner too.
    """
    plans = {}
    for schedule in candidate_schedules(speed.depth, speed.grid):
        for cap in KEEP_CAPS:
            keep = speed.solve_keep(schedule, cfg.target * cfg.margin, cfg.min_keep, cap)
            if keep is not None and speed.speedup(schedule, keep) <= cfg.target * cfg.ceiling:
                plans.setdefault((tuple(schedule), round(keep, 3)), (schedule, keep, speed.speedup(schedule, keep)))
    return list(plans.values())


def old_pick(speed: SpeedModel, cfg: PlanConfig, score) -> tuple:
    """The plan v0.3's planner picked: best score among the 10 landing plans that prune least."""
    landing = [(speed.speedup(s, k), k, s) for s in candidate_schedules(speed.depth, speed.grid)
               if (k := speed.solve_keep(s, cfg.target * cfg.margin, cfg.min_keep)) is not None
               and speed.speedup(s, k) <= cfg.target * cfg.ceiling]
    landing.sort(key=lambda c: (-round(c[1], 3), len(c[2]), c[0]))
    return min((mean_kl(score, s, k), k, merges(s)) for _, k, s in landing[: cfg.max_scored])


def spread_images(dataset, count: int) -> torch.Tensor:
    """`count` images spread evenly over a dataset (over the classes of a class-sorted folder)."""
    step = max(1, len(dataset) // count)
    return torch.stack([dataset[i * step][0] for i in range(min(count, len(dataset)))])


def mean_kl(score, schedule, keep) -> float:
    """The planner's KL of a plan: the mean of its per-image values."""
    return float(score(list(schedule), keep).mean())


def merges(schedule) -> str:
    """Merge steps as block and axis: "5w+10h" merges columns after block 5, rows after block 10."""
    return "+".join(f"{step.block}{step.axis}" for step in schedule) or "none"


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "target", "channel_multiple", "out", data="/tmp/fashion_proof",
                                 bench_batch=harness.Default(64, "batch the latency table is measured at"))
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    start = time.perf_counter()
    base = load_model(args.model).model.eval()
    train = open_data(args.data, resolve_data_config(base), batch_size=args.images, workers=0, seed=0).train
    batch = spread_images(train, args.images)
    table = calibrate_latency(base, torch.device("cpu"), args.bench_batch_size, multiple=args.channel_multiple)
    speed = SpeedModel(base, table, args.channel_multiple)
    cfg = PlanConfig(args.target, multiple=args.channel_multiple)
    score = kl_score(base, lambda: batch, args.channel_multiple)
    depth = len(base.blocks)
    indices = [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1]
    dense = feature_score(base, lambda: batch, args.channel_multiple, indices)
    rows = sorted((mean_kl(score, schedule, keep), dense(schedule, keep), predicted, keep, merges(schedule))
                  for schedule, keep, predicted in landing_plans(speed, cfg))
    new = make_plan(base, table, cfg, score)
    old_kl, old_keep, old_merges = old_pick(speed, cfg, score)
    scores = harness.Table("rank", "KL", "dense error", "predicted", "keep", "merges after blocks")
    for i, (kl, dense_error, predicted, keep, plan_merges) in enumerate(rows, 1):
        scores.add(i, f"{kl:.4f}", f"{dense_error:.4f}", f"{predicted:.2f}x", f"{keep:.0%}", plan_merges)
    picked = f"merges {merges(new.schedule)}, keep {new.keep:.0%}, KL {new.score:.4f}"
    body = [f"{args.model} at {args.target:g}x, channel multiple {args.channel_multiple}, {args.images} calibration "
            f"images from {args.data}, latency table {table.key} (batch {args.bench_batch_size}). KL: the planner's "
            f"score (lower is closer to the original). Dense: relative squared error of the full-grid features of "
            f"blocks {indices}. Untrained models: channels by weight norm. Total time "
            f"{(time.perf_counter() - start) / 60:.0f} min.", "",
            f"- planner, shortlist of the fewest-pruned plans (v0.3): merges {old_merges}, keep "
            f"{old_keep:.0%}, KL {old_kl:.4f}",
            f"- planner, shortlist spread over budgets: {picked}", "", *scores.lines]
    harness.write_results(args.out, "Plan scores: every plan predicted to land, scored as the planner scores", body,
                          headline=f"{len(rows)} landing plans; the planner picks {picked}")


if __name__ == "__main__":
    harness.run_script(main)
