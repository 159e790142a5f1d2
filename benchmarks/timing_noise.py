"""How far does one speed measurement move from run to run on this machine? Measured.

Times the original, a copy of it and a half-pruned version (CDCP keep 50%, widths in
multiples of 8) with the same interleaved measurement `cait compress` lands with, in
several separate runs one after another, and prints each run's paired speedups. The
spread between runs is the floor under any latency model's accuracy here.

    python benchmarks/timing_noise.py --runs 6 --out benchmarks/results/timing_noise_cpu.md
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import run_script
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    device_name,
    measure_throughput,
    paired_speedup,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="examples/reference")
    parser.add_argument("--weights", default="pretrained")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9, help="paired repeats per run (landing uses 9)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cpu")
    base = load_model(args.model, args.weights).model.eval()
    models = {"original": base, "copy": copy.deepcopy(base), "keep 50%": compressed_variant(base, [], 0.5, 8)}
    cfg = SpeedConfig(args.batch_size, warmup=1, repeats=args.repeats)
    lines = ["# Timing noise: one measurement, repeated", "", f"Command: `python {' '.join(sys.argv)}`", "",
             f"Device: {device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32; "
             f"{args.model}, batch {args.batch_size}, {args.repeats} paired repeats per run, runs back to back.", "",
             "| run | copy vs original (repeat range) | keep 50% vs original (repeat range) | seconds |",
             "|---|---|---|---|"]
    halves = []
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        speed = measure_throughput(models, (3, *base.patch_embed.img_size), cfg, device)
        same, half = paired_speedup(speed, "copy", "original"), paired_speedup(speed, "keep 50%", "original")
        halves.append(half[0])
        lines.append(f"| {run} | {same[0]:.2f}x ({same[1]:.2f}-{same[2]:.2f}) | {half[0]:.2f}x ({half[1]:.2f}-{half[2]:.2f}) "
                     f"| {time.perf_counter() - start:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", f"keep 50% over the runs: {min(halves):.2f}x to {max(halves):.2f}x "
              f"({max(halves) / min(halves) - 1:.0%} apart).", ""]
    if args.out:
        write_text_atomic(args.out, "\n".join(lines))


if __name__ == "__main__":
    run_script(main)
