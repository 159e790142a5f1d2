"""Throughput of original vs CAIT-slimmed DeiTs, measured side by side in one run.

Random weights (speed does not depend on them). Every model of one architecture
is timed interleaved with its original (round-robin over repeats, after warm-up),
and the ratio of medians is printed with its spread.

    python benchmarks/speed.py --out benchmarks/results/speed_cpu.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import run_script
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cost import model_macs
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    device_name,
    measure_throughput,
    resolve_device,
)

# name -> (blocks merging after their attention, kept fraction of CDCP channels)
VARIANTS: Dict[str, Tuple[Tuple[int, ...], float]] = {
    "ATME 3,6": ((3, 6), 1.0),
    "ATME 6,9": ((6, 9), 1.0),
    "ATME 3,6,9": ((3, 6, 9), 1.0),
    "CDCP 50%": ((), 0.5),
    "ATME 3,6 + CDCP 75%": ((3, 6), 0.75),
}


def bench_architecture(name: str, cfg: SpeedConfig, device: torch.device) -> List[str]:
    base = load_model(name, weights="random").model.to(device)
    grid = tuple(base.patch_embed.grid_size)
    models = {"original": base}
    for label, (blocks, keep) in VARIANTS.items():
        models[label] = compressed_variant(base, alternating_schedule(blocks, grid), keep).to(device)
    results = measure_throughput(models, (3, *base.patch_embed.img_size), cfg, device)
    base_macs, base_speed = model_macs(base), results["original"].throughput
    rows = []
    for label, model in models.items():
        r = results[label]
        rows.append(
            f"| {name} | {label} | {model_macs(model) / 1e9:.2f} | {base_macs / model_macs(model):.2f}x "
            f"| {r.throughput:.1f} ({r.throughput_min:.1f}-{r.throughput_max:.1f}) | {r.throughput / base_speed:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny", "deit_small", "deit_base"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2, help="forward passes per timed repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = SpeedConfig(batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                      iters_per_repeat=args.iters)
    header = [
        f"command: python {' '.join(sys.argv)}",
        f"device: {device} ({device_name(device)}), threads: {args.threads}, torch {torch.__version__}, "
        f"batch: {args.batch_size}, fp32, repeats: {args.repeats} x {args.iters} iters, median (min-max)",
        "",
        "| model | variant | GMACs | MAC ratio | img/s median (min-max) | measured speedup |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for name in args.models:
        rows += bench_architecture(name, cfg, device)
    if args.out:
        write_text_atomic(args.out, "\n".join(header + rows) + "\n")


if __name__ == "__main__":
    run_script(main)
