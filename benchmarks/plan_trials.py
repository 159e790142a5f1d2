"""Do a few training steps rank plans as the whole recipe does? Each merge schedule at the channel budget
the planner would solve (as plan_choice), scored by the planner's KL on held-out images untrained (step 0,
what make_plan ranks by) and after each --trial-steps count of calibration (the budget annealed as
calibration anneals it, distilled from the original). Compare the ranks with plan_choice's top-1 after
the full recipe (issue 39: plan choice better than its noise).

    python -m benchmarks.plan_trials --model examples/reference_converged --data /tmp/fashion_proof \\
        --val-data /tmp/fashion_select/heldout --target 2.5 --merges 1w 2w 3w --trial-steps 16 48 \\
        --lr 3e-4 --out benchmarks/results/plan_trials_cpu.md
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from benchmarks import harness
from benchmarks.plan_choice import BENCH_BATCH, CHANNEL_MULTIPLE, parse_merges, solved_keep
from benchmarks.plan_scores import merges, spread_images
from cait_cli.method.atme import MergeStep
from cait_cli.method.cdcp import set_budget
from cait_cli.models.loading import load_model
from cait_cli.pipeline.data.batches import StepBatches
from cait_cli.pipeline.data.sources import (collate_skipping, dataset_from, eval_transform, open_data,
                                           resolve_data_config)
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.planning.plan import PlanConfig, SpeedModel
from cait_cli.pipeline.training.calibrate import apply_budget, gated_student
from cait_cli.pipeline.training.loop import run_phase
from cait_cli.pipeline.training.distill import kl_per_image
from cait_cli.pipeline.training.train import TrainConfig

CPU = torch.device("cpu")


def kl_from(base: nn.Module, model: nn.Module, images: torch.Tensor) -> float:
    """The planner's score: the mean KL of the model's logits from the original's."""
    with torch.inference_mode():
        return float(kl_per_image(model.eval()(images), base(images)).mean())


def trial_kl(base: nn.Module, schedule: List[MergeStep], keep: float, batches: StepBatches, steps: int,
             lr: float, images: torch.Tensor) -> float:
    """KL after `steps` calibration steps of the gated student (0: untrained, channels by weight norm)."""
    student = gated_student(base, schedule, CHANNEL_MULTIPLE)
    set_budget(student, keep)
    if steps:
        tcfg = TrainConfig(steps=steps, lr=lr, warmup_steps=min(20, steps // 10))
        run_phase(student, base, batches, tcfg, CPU, phase="calibrate",
                  before_step=lambda step: apply_budget(student, step, steps, keep))
        set_budget(student, keep)
    return kl_from(base, student, images)


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "seed", "data", "target", "out", latency_cache=harness.Default(
        None, "folder of latency tables (None: cait's cache, $CAIT_CACHE)"))
    parser.add_argument("--val-data", required=True, help="held-out images the KL is read on")
    parser.add_argument("--images", type=int, default=512, help="held-out images the KL is read on")
    parser.add_argument("--lr", type=float, default=1e-4, help="the weights' lr in the trials")
    parser.add_argument("--merges", nargs="+", type=parse_merges, required=True, help="5w, 5w+10h, none")
    parser.add_argument("--trial-steps", nargs="+", type=int, default=[16, 48], help="calibration steps per trial")
    args = parser.parse_args()
    base = load_model(args.model).model.eval()
    data_cfg = resolve_data_config(base)
    batches = StepBatches(open_data(args.data, data_cfg, batch_size=64, seed=args.seed).train, 64, args.seed,
                          collate_skipping)
    images = spread_images(dataset_from(args.val_data, eval_transform(data_cfg)), args.images)
    table = calibrate_latency(base, CPU, BENCH_BATCH, cache_dir=args.latency_cache, multiple=CHANNEL_MULTIPLE)
    speed, cfg = SpeedModel(base, table, CHANNEL_MULTIPLE), PlanConfig(args.target, multiple=CHANNEL_MULTIPLE)
    steps = [0, *args.trial_steps]
    rows = harness.Table("merges after blocks", "keep", *[f"KL after {s} steps" for s in steps], echo=True)
    for schedule in args.merges:
        keep = solved_keep(speed, schedule, cfg)
        if keep is None:
            continue
        torch.manual_seed(args.seed)
        rows.add(merges(schedule), f"{keep:.0%}",
                 *[f"{trial_kl(base, schedule, keep, batches, s, args.lr, images):.4f}" for s in steps])
    body = [f"{args.model} at {args.target:g}x (budgets solved on latency table {table.key}), KL of each plan's "
            f"logits from the original's on {len(images)} images of {args.val_data}; trials: calibration from "
            f"{args.data}, batch 64, lr {args.lr:g}, seed {args.seed}. Lower is closer.", "", *rows.lines]
    harness.write_results(args.out, "Plan trials: the planner's KL before and after a few calibration steps", body,
                          headline=f"{len(rows.lines) - 2} plans at {args.target:g}x")


if __name__ == "__main__":
    harness.run_script(main)
