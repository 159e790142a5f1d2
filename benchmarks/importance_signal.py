"""Which token importance should ATME's fusion use? The class token's attention, or the attention
each token receives from the average query (what models without a class token use)?

Runs the README quick start's short run (`cait compress examples/reference --data
examples/fashion_mnist --target-speedup 1.9 --calib-steps 50 --finetune-steps 150 --workers 0`)
through the library once per signal, with everything else fixed: the same seed, the same latency
table (the cache), and no re-planning (`replan=False`), so both runs train the same plan and
only the merge weights differ. Accuracy is compared, not speed.

    OMP_NUM_THREADS=1 python benchmarks/importance_signal.py --out benchmarks/results/importance_signal_cpu.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks.one_plan import add_run_options, compress_run, merges, publish, require_one_plan  # noqa: E402
from cait_cli.errors import run_script  # noqa: E402
from cait_cli.method.block import IMPORTANCE_SOURCES  # noqa: E402


def compress_with(signal: str, args: argparse.Namespace, out_dir: Path) -> Dict[str, Any]:
    """The quick start's run with token importance `signal`; its report."""
    return compress_run(args.model, out_dir / f"{signal}.cait", args.latency_cache, target_speedup=args.target,
                        data=args.data, calib_steps=args.calib_steps, finetune_steps=args.finetune_steps,
                        seed=args.seed, importance=signal)


def table(reports: Dict[str, Dict[str, Any]]) -> List[str]:
    rows = ["| signal | plan (merges after blocks; keep) | top-1 original -> compressed | agreement | "
            "measured speedup | wall time |", "|---|---|---|---|---|---|"]
    for signal, r in reports.items():
        plan, base, small = r["plan"], r["baseline"], r["compressed"]
        rows.append(f"| {signal} | {merges(plan, '+')}; {plan['keep']:.0%} | {100 * base['top1']:.1f}% -> "
                    f"{100 * small['top1']:.1f}% ({100 * (small['top1'] - base['top1']):+.1f} pt) | "
                    f"{100 * small['agreement']:.1f}% | {r['measured_speedup']:.2f}x | {r['wall_s']:.0f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(parser, latency_cache_help="default: cait's cache ($CAIT_CACHE)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reports = {signal: compress_with(signal, args, Path(tmp)) for signal in IMPORTANCE_SOURCES}
    require_one_plan(reports.values())
    lines = ["# Token importance for ATME: class-token attention vs attention received", "",
             f"Command: `OMP_NUM_THREADS=1 python {' '.join(sys.argv)}`", "",
             f"{args.model} at {args.target:g}x, {args.calib_steps} calibration + {args.finetune_steps} fine-tuning "
             f"steps on {args.data}, seed {args.seed}, one plan for both (replan off, the same latency table). "
             "cls: the attention the class token gives each token; received: the attention each token receives "
             "from the size-weighted mean query (the renormalised geometric mean over queries), both averaged "
             "over heads. Top-1 and agreement on the data's validation images.", "", *table(reports), ""]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    run_script(main)
