"""Which plan trains best? Merge schedules at one predicted speedup, each trained with the same recipe
and judged on held-out images (issue 39: is plan choice worth more than the planner's score sees?).

For every --merges schedule the channel budget is solved, on the shared latency table, for the speedup
the planner aims at (target x margin), as make_plan does; then `cait compress --plan` trains that plan
(re-planning off, the same seed, steps and rates) and its top-1 and agreement with the original are
read on --val-data, held-out images of the training split (`make_fashion_subset.py --heldout-per-class`).

    python -m benchmarks.plan_choice --model examples/reference_converged --data /tmp/fashion_proof \\
        --val-data /tmp/fashion_select/heldout --calib-steps 62 --finetune-steps 188 --lr 3e-4 \\
        --merges 4w 5w 7w 9w none --out benchmarks/results/plan_choice_cpu.md
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks import harness
from benchmarks.one_plan import RUN_OPTIONS, compress_run
from benchmarks.plan_scores import merges
from cait_cli.errors import CaitError
from cait_cli.method.atme import MergeStep
from cait_cli.models.loading import load_model
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.planning.plan import Plan, PlanConfig, SpeedModel

CHANNEL_MULTIPLE = 8  # compress's default: the table and the plans are those of a default run
BENCH_BATCH = 64  # compress's throughput batch on the CPU


def parse_merges(text: str) -> List[MergeStep]:
    """"5w+10h" -> columns merged after block 5, rows after block 10; "none" -> no merge."""
    if text == "none":
        return []
    try:
        return [MergeStep(int(step[:-1]), step[-1]) for step in text.split("+")]
    except ValueError:
        raise CaitError(f"--merges takes steps like 5w+10h (block, then axis h or w) or none, got {text!r}") from None


def solved_keep(speed: SpeedModel, schedule: List[MergeStep], cfg: PlanConfig) -> Optional[float]:
    """The largest channel budget whose predicted speedup reaches the planner's aim, as make_plan solves it."""
    return speed.solve_keep(schedule, cfg.target * cfg.margin, cfg.min_keep, cfg.max_keep)


def train_plan(schedule: List[MergeStep], keep: float, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    plan_file = folder / f"{merges(schedule)}.json"
    plan_file.write_text(json.dumps(Plan(schedule, keep, predicted_speedup=0.0).to_dict()))  # compress predicts it anew
    return compress_run(args.model, folder / f"{merges(schedule)}.cait", args.latency_cache,
                        target_speedup=args.target, data=args.data, val_data=args.val_data,
                        calib_steps=args.calib_steps, finetune_steps=args.finetune_steps, seed=args.seed,
                        lr=args.lr, plan=str(plan_file), max_val_images=None)


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "seed", *RUN_OPTIONS, latency_cache=harness.Default(
        None, "folder of latency tables, shared with the runs (None: cait's cache, $CAIT_CACHE)"))
    parser.add_argument("--val-data", required=True, help="held-out images (not the test set): compress's --val-data")
    parser.add_argument("--lr", type=float, default=None, help="the weights' lr (None: compress's default)")
    parser.add_argument("--merges", nargs="+", type=parse_merges, required=True,
                        help="merge schedules to compare: 5w, 5w+10h, none")
    args = parser.parse_args()
    base = load_model(args.model).model.eval()
    table = calibrate_latency(base, torch.device("cpu"), BENCH_BATCH, cache_dir=args.latency_cache,
                              multiple=CHANNEL_MULTIPLE)
    speed, cfg = SpeedModel(base, table, CHANNEL_MULTIPLE), PlanConfig(args.target, multiple=CHANNEL_MULTIPLE)
    rows = harness.Table("merges after blocks", "keep", "predicted", "top-1 original -> compressed", "top-1 (%)",
                         "agreement", "wall time", echo=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for schedule in args.merges:
            keep = solved_keep(speed, schedule, cfg)
            if keep is None:
                rows.add(merges(schedule), "—", "not reached", "—", "—", "—", "—")
                continue
            r = train_plan(schedule, keep, args, Path(tmp))
            results.append((r["compressed"]["top1"], merges(schedule)))
            rows.add(merges(schedule), f"{keep:.0%}", f"{r['plan']['predicted_speedup']:.2f}x", harness.top1_cell(r),
                     f"{100 * r['compressed']['top1']:.2f}", f"{100 * r['compressed']['agreement']:.2f}%",
                     f"{r['wall_s']:.0f} s")
    if not results:
        raise CaitError(f"no schedule reaches {args.target:g}x on this latency table")
    lr = args.lr if args.lr is not None else "compress's default"
    body = [f"{args.model} at {args.target:g}x (each plan's budget solved for {cfg.target * cfg.margin:.2f}x on latency "
            f"table {table.key}), {args.calib_steps} calibration + {args.finetune_steps} fine-tuning steps on "
            f"{args.data}, lr {lr}, seed {args.seed}, re-planning off. Top-1 and agreement on {args.val_data}, every "
            "image.", "", *rows.lines]
    best_top1, best = max(results)
    harness.write_results(args.out, "Plan choice: merge schedules at one speedup, trained and judged on held-out images",
                          body, headline=f"best on held-out images: merges {best}, top-1 {100 * best_top1:.2f}%")


if __name__ == "__main__":
    harness.run_script(main)
