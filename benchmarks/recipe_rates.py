"""Which learning rates for what only a compressed model trains: CDCP's channel scores and ATME's
merge weights? Chosen on held-out images, not on the test set the proof reports.

Runs `cait compress` once per setting (--settings SCORE_LR:MERGE_LR, "-" for the merge weights at
the weights' own lr) with everything else fixed: the same seed, the same plan (--plan, an earlier
run's report, or the planner's first plan on a shared latency table; re-planning off), the same
steps and weights' lr. Reports top-1 and agreement with the original on --val-data, held-out
images of the training split (`examples/make_fashion_subset.py --heldout-per-class`), and where
the merge weights (alpha: importance against log-size in ATME's merge choice) ended up.

    python -m benchmarks.recipe_rates --model examples/reference_converged --data /tmp/fashion_proof \\
        --val-data /tmp/fashion_proof/heldout --calib-steps 62 --finetune-steps 188 --lr 3e-4 \\
        --settings 2e-2:- 5e-3:- 5e-2:- 2e-2:1e-2 2e-2:1e-1 --out benchmarks/results/recipe_rates_cpu.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks import harness
from benchmarks.one_plan import RUN_OPTIONS, compress_run, require_one_plan
from cait_cli.errors import CaitError
from cait_cli.models.loading import load_model
from cait_cli.pipeline.training.train import TrainConfig

Setting = Tuple[float, Optional[float]]  # (score lr, merge-weight lr; None: the weights' lr)


def parse_setting(text: str) -> Setting:
    """"2e-2:1e-2" -> (0.02, 0.01); "2e-2:-" -> (0.02, None)."""
    score, _, merge = text.partition(":")
    try:
        return float(score), (None if merge in ("", "-") else float(merge))
    except ValueError:
        raise CaitError(f"--settings takes SCORE_LR:MERGE_LR (MERGE_LR - for the weights' lr), got {text!r}") from None


def label(setting: Setting) -> str:
    score, merge = setting
    return f"scores {score:g}, merge weights {'= weights' if merge is None else f'{merge:g}'}"


def merge_weights(checkpoint: Path) -> List[float]:
    """ATME's merge weights (alpha) in a compressed checkpoint, one per merge step."""
    model = load_model(str(checkpoint)).model
    return [float(v) for name, p in model.named_parameters() if name.endswith(".alpha") for v in p.detach().flatten()]


def run(setting: Setting, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    score, merge = setting
    report = compress_run(args.model, out, args.latency_cache, target_speedup=args.target, data=args.data,
                          val_data=args.val_data, calib_steps=args.calib_steps, finetune_steps=args.finetune_steps,
                          seed=args.seed, lr=args.lr, score_lr=score, merge_lr=merge, plan=args.plan,
                          max_val_images=None)
    return dict(report, alphas=merge_weights(out))


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "seed", *RUN_OPTIONS, latency_cache=harness.Default(
        None, "folder of latency tables (None: cait's cache, $CAIT_CACHE)"))
    parser.add_argument("--val-data", required=True, help="held-out images (not the test set): compress's --val-data")
    parser.add_argument("--lr", type=float, default=None, help="the weights' lr (None: compress's default)")
    parser.add_argument("--plan", default=None, help="an earlier run's report.json or checkpoint: its plan, fixed")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[(TrainConfig.score_lr, None)],
                        help="SCORE_LR:MERGE_LR pairs (MERGE_LR -: the weights' lr)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reports = {s: run(s, args, Path(tmp) / f"{i}.cait") for i, s in enumerate(args.settings)}
    require_one_plan(reports.values())
    table = harness.Table("setting", "plan (merges after blocks; keep)", "top-1 original -> compressed",
                          "top-1 (%)", "agreement", "merge weights after", "wall time")
    for setting, r in reports.items():
        alphas = ", ".join(f"{a:.3f}" for a in r["alphas"]) or "-"
        table.add(label(setting), harness.plan_cell(r), harness.top1_cell(r), f"{100 * r['compressed']['top1']:.2f}",
                  f"{100 * r['compressed']['agreement']:.2f}%", alphas, f"{r['wall_s']:.0f} s")
    body = [f"{args.model} at {args.target:g}x, {args.calib_steps} calibration + {args.finetune_steps} fine-tuning "
            f"steps on {args.data} (weights' lr {reports[args.settings[0]]['training']['lr']:g}), seed {args.seed}, "
            f"one plan for every setting (re-planning off). Top-1 and agreement on {args.val_data}, every image. "
            "Merge weights start at 1.0.", "", *table.lines]
    best = max(reports, key=lambda s: reports[s]["compressed"]["top1"])
    headline = f"best on held-out images: {label(best)}, top-1 {100 * reports[best]['compressed']['top1']:.2f}%"
    harness.write_results(args.out, "Learning rates of the channel scores and merge weights, on held-out images",
                          body, headline=headline)


if __name__ == "__main__":
    harness.run_script(main)
