"""Which token importance should ATME's fusion use? The class token's attention, or the attention
each token receives from the average query (what models without a class token use)?

Runs the README quick start's short run (`cait compress examples/reference --data
examples/fashion_mnist --target-speedup 1.9 --calib-steps 50 --finetune-steps 150 --workers 0`)
through the library once per signal, with everything else fixed: the same seed, the same latency
table (the cache), and no re-planning (`replan=False`), so both runs train the same plan and
only the merge weights differ. Accuracy is compared, not speed.

    OMP_NUM_THREADS=1 python -m benchmarks.importance_signal --out benchmarks/results/importance_signal_cpu.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict

from benchmarks import harness
from benchmarks.one_plan import RUN_OPTIONS, compress_run, require_one_plan
from cait_cli.method.block import IMPORTANCE_SOURCES


def compress_with(signal: str, args: argparse.Namespace, out_dir: Path) -> Dict[str, Any]:
    """The quick start's run with token importance `signal`; its report."""
    return compress_run(args.model, out_dir / f"{signal}.cait", args.latency_cache, target_speedup=args.target,
                        data=args.data, calib_steps=args.calib_steps, finetune_steps=args.finetune_steps,
                        seed=args.seed, importance=signal)


def add_row(table: harness.Table, signal: str, r: Dict[str, Any]) -> None:
    table.add(signal, harness.plan_cell(r), harness.top1_cell(r), f"{100 * r['compressed']['agreement']:.1f}%",
              f"{r['measured_speedup']:.2f}x", f"{r['wall_s']:.0f} s")


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "seed", *RUN_OPTIONS, latency_cache=harness.Default(
        None, "folder of latency tables (None: cait's cache, $CAIT_CACHE)"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reports = {signal: compress_with(signal, args, Path(tmp)) for signal in IMPORTANCE_SOURCES}
    require_one_plan(reports.values())
    table = harness.Table("signal", "plan (merges after blocks; keep)", "top-1 original -> compressed",
                          "agreement", "measured speedup", "wall time")
    for signal, report in reports.items():
        add_row(table, signal, report)
    body = [f"{args.model} at {args.target:g}x, {args.calib_steps} calibration + {args.finetune_steps} fine-tuning "
            f"steps on {args.data}, seed {args.seed}, one plan for both (replan off, the same latency table). "
            "cls: the attention the class token gives each token; received: the attention each token receives "
            "from the size-weighted mean query (the renormalised geometric mean over queries), both averaged "
            "over heads. Top-1 and agreement on the data's validation images.", "", *table.lines]
    headline = ", ".join(f"{signal} {100 * r['compressed']['top1']:.1f}%" for signal, r in reports.items())
    harness.write_results(args.out, "Token importance for ATME: class-token attention vs attention received", body,
                          headline=f"top-1 {headline}")


if __name__ == "__main__":
    harness.run_script(main)
