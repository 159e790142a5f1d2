"""How well does the planner's latency model predict the slimmed model? Measured, on this device.

For each model this measures a fresh latency table (timing how long that takes), then
builds slimmed models for a grid of plans (merge schedules x channel budgets, widths in
the channel multiple, channels chosen by weight norms as calibration starts), predicts
each one's speedup from the table, and measures all of them against the original,
interleaved in one run. Prints predicted against measured speedup per plan, and the
median and worst absolute error.

    python benchmarks/planner_accuracy.py --out benchmarks/results/planner_accuracy_cpu.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn

from cait_cli.errors import run_script
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.latency import calibrate_latency
from cait_cli.pipeline.measure import SpeedConfig, device_name, measure_throughput, paired_speedup
from cait_cli.pipeline.plan import SpeedModel

# merge blocks as fractions of the depth: none, one, two, three and four steps
SCHEDULES = [(), (0.5,), (0.33, 0.67), (0.25, 0.5, 0.75), (0.1, 0.35, 0.6, 0.85), (0.1, 0.2)]
KEEPS = [1.0, 0.75, 0.5, 0.35]


def plan_grid(model: nn.Module) -> List[tuple]:
    depth, grid = len(model.blocks), tuple(model.patch_embed.grid_size)
    merge_blocks = [sorted({min(depth - 1, max(1, round(f * depth))) for f in fractions}) for fractions in SCHEDULES]
    schedules = [alternating_schedule(blocks, grid) for blocks in merge_blocks]
    return [(schedule, keep) for schedule in schedules for keep in KEEPS if schedule or keep < 1.0]


def describe(schedule, keep: float) -> str:
    merges = ",".join(str(s.block) for s in schedule) or "none"
    return f"merge {merges}; keep {keep:.0%}"


def study(name: str, weights: str, batch: int, repeats: int, multiple: int, device: torch.device) -> List[str]:
    base = load_model(name, weights).model.to(device).eval()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        table = calibrate_latency(base, device, batch, cache_dir=Path(cache), multiple=multiple)
        seconds = time.perf_counter() - start
    speed = SpeedModel(base, table, multiple)
    models: Dict[str, nn.Module] = {"original": base}
    predicted: Dict[str, float] = {}
    for schedule, keep in plan_grid(base):
        label = describe(schedule, keep)
        models[label] = compressed_variant(base, schedule, keep, multiple).to(device)
        predicted[label] = speed.speedup(schedule, keep)
    measured = measure_throughput(models, (3, *base.patch_embed.img_size),
                                  SpeedConfig(batch, warmup=1, repeats=repeats, iters_per_repeat=2), device)
    lines = [f"## {name} ({weights} weights)", "",
             f"Latency table measured in {seconds:.0f} s; {len(predicted)} plans; batch {batch}.", "",
             "| plan | predicted | measured (repeat range) | error |", "|---|---|---|---|"]
    errors = []
    for label, guess in predicted.items():
        ratio, low, high = paired_speedup(measured, label, "original")
        errors.append(abs(guess / ratio - 1))
        lines.append(f"| {label} | {guess:.2f}x | {ratio:.2f}x ({low:.2f}-{high:.2f}) | {guess / ratio - 1:+.1%} |")
    lines += ["", f"Median absolute error {statistics.median(errors):.1%}, worst {max(errors):.1%}.", ""]
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["examples/reference:pretrained", "deit_small:random"],
                        help="NAME:WEIGHTS pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--channel-multiple", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    lines = ["# Planner accuracy: predicted against measured speedup", "",
             f"Command: `python {' '.join(sys.argv)}`", "",
             f"Device: {device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32; "
             f"channel multiple {args.channel_multiple}; every plan measured against its original, interleaved.", ""]
    for spec in args.models:
        name, _, weights = spec.rpartition(":")
        lines += study(name, weights, args.batch_size, args.repeats, args.channel_multiple, device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    run_script(main)
