"""Does the compiled training step train as well as the eager one?

Runs the README quick start's short run (`cait compress examples/reference --data
examples/fashion_mnist --target-speedup 1.9 --calib-steps 50 --finetune-steps 150`) three times
through the library, all with one latency table; the first run keeps its first plan
(`replan=False`) and the others reuse it from the first run's checkpoint (`plan=`, `--plan`), so every
run slims the same plan whatever its seed does to calibration:

- eager, seed 0, and compiled (`compile=True`), seed 0: the same images in the same order and the
  same steps; only the step's execution differs;
- eager, seed 1: the noise to judge the difference by (another data order and initialisation).

Top-1 and agreement with the original on the data's validation images; the compiled run's compile
time from the report. The compiled result "matches within noise" when its top-1 differs from eager
seed 0's by no more than seed 1 differs from seed 0 (or by one validation image).

    python -m benchmarks.compile_accuracy --device cuda --out benchmarks/results/compile_accuracy_gpu.md
    python -m benchmarks.compile_accuracy --calib-steps 2 --finetune-steps 2  # smoke, on the CPU
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from benchmarks import harness
from benchmarks.one_plan import RUN_OPTIONS, compress_run, require_one_plan

RUNS = (("eager, seed 0", False, 0), ("compiled, seed 0", True, 0), ("eager, seed 1", False, 1))


def run(compiled: bool, seed: int, args: argparse.Namespace, out: Path, plan: Optional[Path]) -> Dict[str, Any]:
    """One short run; `plan`: an earlier run's checkpoint whose plan it slims (None: plan anew)."""
    return compress_run(args.model, out, args.latency_cache or out.parent / "latency", target_speedup=args.target,
                        data=args.data, calib_steps=args.calib_steps, finetune_steps=args.finetune_steps,
                        compile=compiled, seed=seed, device=args.device, plan=str(plan) if plan else None)


def compile_seconds(report: Dict[str, Any]) -> str:
    steps = (report.get("training") or {}).get("steps") or {}
    if not any(phase.get("compiled") for phase in steps.values()):
        fallbacks = [phase["fallback"] for phase in steps.values() if phase.get("fallback")]
        return f"eager ({fallbacks[0]})" if fallbacks else "—"
    return f"{sum(phase.get('compile_seconds', 0.0) for phase in steps.values()):.0f} s"


def add_row(table: harness.Table, name: str, r: Dict[str, Any]) -> None:
    table.add(name, harness.plan_cell(r), harness.top1_cell(r), f"{100 * r['compressed']['agreement']:.1f}%",
              compile_seconds(r), f"{r['wall_s']:.0f} s")


def verdict(reports: Dict[str, Dict[str, Any]]) -> str:
    eager, compiled, other_seed = (r["compressed"] for r in reports.values())
    images = eager["images"]
    gap = abs(compiled["top1"] - eager["top1"])
    noise = max(abs(other_seed["top1"] - eager["top1"]), 1 / images)
    within = "within" if gap <= noise + 1e-9 else "NOT within"
    return (f"compiled - eager (same seed): {100 * (compiled['top1'] - eager['top1']):+.2f} pt of top-1; seed 1 - "
            f"seed 0 (eager): {100 * (other_seed['top1'] - eager['top1']):+.2f} pt; one image is "
            f"{100 / images:.2f} pt: {within} noise.")


def main() -> None:
    parser = harness.make_parser(__doc__, "model", *RUN_OPTIONS, "device")
    args = parser.parse_args()
    reports: Dict[str, Dict[str, Any]] = {}
    table = harness.Table("run", "plan (merges after blocks; keep)", "top-1 original -> compressed", "agreement",
                          "compile", "wall", echo=True)
    with tempfile.TemporaryDirectory(prefix="cait-compile-accuracy-") as tmp:
        first_out = Path(tmp) / "0.cait"
        for name, compiled, seed in RUNS:
            out = Path(tmp) / f"{len(reports)}.cait"
            reports[name] = run(compiled, seed, args, out, plan=first_out if reports else None)
            add_row(table, name, reports[name])
    require_one_plan(reports.values())
    first = next(iter(reports.values()))
    body = [f"{args.model} at {args.target:g}x, {args.calib_steps} calibration + {args.finetune_steps} fine-tuning "
            f"steps on {args.data}, one plan for all runs, on {first['device']} ({first['precision']}); top-1 and "
            f"agreement on {first['compressed']['images']} validation images.", "", *table.lines]
    harness.write_results(args.out, "Eager vs compiled training step: accuracy on the same seed", body,
                          headline=verdict(reports), device=args.device)


if __name__ == "__main__":
    harness.run_script(main)
