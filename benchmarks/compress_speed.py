"""Does `cait compress` hit the speedup it is asked for? Measured, on this device.

For each target S this runs the compress pipeline on DeiT-Small's architecture with
random weights and zero training steps (speed does not depend on the weights),
exactly as `cait compress deit_small --weights random --target-speedup S
--calib-steps 0 --finetune-steps 0` does, and prints target vs measured speedup
(the measurement of the exported model against the original, interleaved).

    python benchmarks/compress_speed.py --out benchmarks/results/compress_speed_cpu.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import run_script
from cait_cli.pipeline.compress import CompressConfig, compress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--targets", nargs="+", type=float, default=[1.5, 1.9, 2.5])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--bench-batch-size", type=int, default=None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the checkpoints in this folder (TARGET.cait each)")
    args = parser.parse_args()

    lines = [f"command: python {' '.join(sys.argv)}", "",
             "| model | target | plan (merge blocks; kept channel MACs) | predicted | measured (repeat range) "
             "| in band (0.97-1.08 x target) | landing measurements | device | batch | runtime | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            out = (args.keep or Path(tmp)) / f"{target}.cait"
            cfg = CompressConfig(model=args.model, target_speedup=target, out=out,
                                 weights="random", calib_steps=0, finetune_steps=0, device=args.device,
                                 bench_batch_size=args.bench_batch_size, runtime=args.runtime,
                                 latency_cache=Path(tmp) / "latency")  # a new user's empty cache
            start = time.perf_counter()
            report = compress(cfg).report
            wall = time.perf_counter() - start
            plan = report["plan"]
            merges = ",".join(str(b) for b, _ in plan["schedule"]) or "none"
            low, high = report["measured_speedup_range"]
            tries = " / ".join(f"{a['measured']:.2f}x" for a in report["attempts"])
            lines.append(f"| {args.model} | {target:g}x | {merges}; {plan['keep']:.0%} | "
                         f"{report['predicted_speedup']:.2f}x | {report['measured_speedup']:.2f}x "
                         f"({low:.2f}-{high:.2f}) | {'yes' if report['landed'] else 'NO'} "
                         f"| {tries} "
                         f"| {report['device']} ({report['threads']} threads) | {report['batch_size']} "
                         f"| {report['runtime']} | {wall / 60:.1f} min |")
            print(lines[-1], flush=True)
    if args.out:
        write_text_atomic(args.out, "\n".join(lines) + f"\n\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    run_script(main)
