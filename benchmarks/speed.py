"""Throughput of original vs CAIT-slimmed DeiTs, measured side by side in one run.

Random weights (speed does not depend on them). Every model of one architecture
is timed interleaved with its original (round-robin over repeats, after warm-up),
and the ratio of medians is printed with its spread.

    python -m benchmarks.speed --out benchmarks/results/speed_cpu.md
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from benchmarks import harness
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cost import model_macs
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, resolve_device

# name -> (blocks merging after their attention, kept fraction of CDCP channels)
VARIANTS: Dict[str, Tuple[Tuple[int, ...], float]] = {
    "ATME 3,6": ((3, 6), 1.0),
    "ATME 6,9": ((6, 9), 1.0),
    "ATME 3,6,9": ((3, 6, 9), 1.0),
    "CDCP 50%": ((), 0.5),
    "ATME 3,6 + CDCP 75%": ((3, 6), 0.75),
}


def bench_architecture(name: str, cfg: SpeedConfig, device: torch.device, table: harness.Table) -> Dict[str, float]:
    """A row per variant of one architecture; the measured speedup of each."""
    base = load_model(name, weights="random").model.to(device)
    grid = tuple(base.patch_embed.grid_size)
    models = {"original": base}
    for label, (blocks, keep) in VARIANTS.items():
        models[label] = compressed_variant(base, alternating_schedule(blocks, grid), keep).to(device)
    results = measure_throughput(models, (3, *base.patch_embed.img_size), cfg, device)
    base_macs, base_speed = model_macs(base), results["original"].throughput
    for label, model in models.items():
        r = results[label]
        table.add(name, label, f"{model_macs(model) / 1e9:.2f}", f"{base_macs / model_macs(model):.2f}x",
                  f"{r.throughput:.1f} ({r.throughput_min:.1f}-{r.throughput_max:.1f})",
                  f"{r.throughput / base_speed:.2f}x")
    return {label: results[label].throughput / base_speed for label in VARIANTS}


def main() -> None:
    parser = harness.make_parser(__doc__, "iters", "warmup", "threads", "out", models=["deit_tiny", "deit_small",
                                 "deit_base"], timed_batch=16, repeats=7, device="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = SpeedConfig(batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                      iters_per_repeat=args.iters)
    table = harness.Table("model", "variant", "GMACs", "MAC ratio", "img/s median (min-max)", "measured speedup",
                          echo=True)
    first = next(iter(VARIANTS))
    figures = [f"{name} {bench_architecture(name, cfg, device, table)[first]:.2f}x" for name in args.models]
    body = [f"Batch {args.batch_size}, fp32, repeats: {args.repeats} x {args.iters} iters, median (min-max).", "",
            *table.lines]
    harness.write_results(args.out, "Throughput of original vs CAIT-slimmed DeiTs, measured side by side in one run",
                          body, headline=f"{first}: " + ", ".join(figures), device=device)


if __name__ == "__main__":
    harness.run_script(main)
