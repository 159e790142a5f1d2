"""What planning for the wrong runtime costs: each model planned under each runtime, measured under all.

For every model and every planning runtime, `cait compress MODEL --target-speedup S --runtime R`
(no training: speed does not depend on the weights) lands a checkpoint; then `cait eval` times that
checkpoint against the original under every runtime (interleaved, the same estimator as compress).
The diagonal is what compress promised; off the diagonal, what a user serving under another runtime
would get.

    python -m benchmarks.runtimes --out benchmarks/results/runtimes_cpu.md
    python -m benchmarks.runtimes --models examples/reference --runtimes eager onnxruntime \\
        --bench-batch-size 8 --repeats 2      # smoke test of the script only
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import CaitError, run_script
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.evaluate import EvalConfig, evaluate

WEIGHTS = {"examples/reference": "pretrained", "examples/reference_converged": "pretrained"}  # else random


def plan_under(model: str, runtime: str, args, out: Path) -> Dict:
    cfg = CompressConfig(model=model, target_speedup=args.target, out=out, weights=WEIGHTS.get(model, "random"),
                         calib_steps=0, finetune_steps=0, device=args.device, runtime=runtime,
                         bench_batch_size=args.bench_batch_size, latency_cache=out.parent / "latency")
    start = time.perf_counter()
    report = compress(cfg).report
    report["wall_s"] = time.perf_counter() - start
    return report


def measured_under(checkpoint: Path, model: str, runtime: str, args) -> str:
    try:
        report = evaluate(EvalConfig(model=str(checkpoint), baseline=model, weights=WEIGHTS.get(model, "random"),
                                     device=args.device, runtime=runtime, batch_size=args.bench_batch_size,
                                     repeats=args.repeats, workers=0))
    except CaitError as err:
        return f"failed: {err}"
    low, high = report["speedup_range"]
    return f"{report['speedup']:.2f}x ({low:.2f}-{high:.2f})"


def rows_for(model: str, args, tmp: Path) -> List[str]:
    rows = []
    for planned in args.runtimes:
        out = tmp / f"{Path(model).name}-{planned}.cait"
        try:
            report = plan_under(model, planned, args, out)
        except CaitError as err:
            rows.append(f"| {model} | {planned} | refused: {err} |" + " |" * (len(args.runtimes) + 1))
            print(rows[-1], flush=True)
            continue
        plan = report["plan"]
        merges = ",".join(str(b) for b, _ in plan["schedule"]) or "none"
        cells = [measured_under(out, model, measured, args) for measured in args.runtimes]
        rows.append(f"| {model} | {planned} | {merges}; keep {plan['keep']:.0%} | {report['measured_speedup']:.2f}x "
                    f"({len(report['attempts'])} landing) | " + " | ".join(cells) + f" | {report['wall_s']:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["examples/reference", "deit_small"])
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compile", "onnxruntime"])
    parser.add_argument("--target", type=float, default=1.9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bench-batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats of each cross-measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    measured = " | ".join(f"measured under {r}" for r in args.runtimes)
    lines = [f"# Planned under one runtime, measured under each ({args.target:g}x target)", "",
             f"Command: `python -m benchmarks.runtimes {' '.join(sys.argv[1:])}`", "",
             f"| model | planned under | plan | compress's own measurement | {measured} | compress wall time |",
             "|---|---|---|---|" + "---|" * len(args.runtimes) + "---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="cait-runtimes-") as tmp:
        for model in args.models:
            lines += rows_for(model, args, Path(tmp))
    lines += ["", f"torch {torch.__version__}, {torch.get_num_threads()} threads; nothing else running.", ""]
    if args.out:
        write_text_atomic(args.out, "\n".join(lines))


if __name__ == "__main__":
    run_script(main)
