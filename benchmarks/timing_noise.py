"""How far does one speed measurement move from run to run on this machine, by estimator? Measured.

Times the original, a copy of it and a half-pruned version (CDCP keep 50%, widths in
multiples of 8) with the same interleaved measurement `cait compress` lands with, in
several separate runs one after another, and reads each run's speedups with every
estimator (ESTIMATORS: the median of paired ratios, as cait reads them; the ratio of each
model's fastest run; the median of the quietest half of the pairs) from the same timings.
The estimator whose answer moves least from run to run (and reads the copy closest to
1.00x) is the one landing can trust; the spread between runs is the floor under any
latency model's accuracy here.

    python -m benchmarks.timing_noise --runs 6 --out benchmarks/results/timing_noise_cpu.md
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch

from benchmarks import harness
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    measure_throughput,
    paired_speedup,
    speedup_estimate,
)


def fastest_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """The ratio of each model's fastest run (a neighbour's load only ever slows a run)."""
    return max(num) / max(den)


def quiet_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """The median ratio of the half of the pairs timed in the quietest moments (both models near their
    best), where a load that hit one model of a pair and not the other is least likely."""
    calm = [a / max(num) + b / max(den) for a, b in zip(num, den)]  # 2.0: both at their best
    quietest = sorted(range(len(calm)), key=lambda i: -calm[i])[: (len(calm) + 1) // 2]
    return statistics.median(num[i] / den[i] for i in quietest)


# speedup of num over den from their paired per-repeat rates; "median" is cait's (measure.speedup_estimate)
ESTIMATORS: Dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "median": speedup_estimate, "fastest": fastest_ratio, "quiet": quiet_ratio}


def main() -> None:
    parser = harness.make_parser(__doc__, "model", "out", timed_batch=64,
                                 repeats=harness.Default(9, "paired repeats per run (landing uses 9)"))
    parser.add_argument("--weights", default="pretrained")
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cpu")
    base = load_model(args.model, args.weights).model.eval()
    models = {"original": base, "copy": copy.deepcopy(base), "keep 50%": compressed_variant(base, [], 0.5, 8)}
    cfg = SpeedConfig(args.batch_size, warmup=1, repeats=args.repeats)
    runs = harness.Table("run", *(f"{model}, {e}" for e in ESTIMATORS for model in ("copy", "keep 50%")),
                         "keep 50%, paired-ratio range", "seconds", echo=True)
    halves: Dict[str, List[float]] = {e: [] for e in ESTIMATORS}
    copies: Dict[str, List[float]] = {e: [] for e in ESTIMATORS}
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        speed = measure_throughput(models, (3, *base.patch_embed.img_size), cfg, device)
        cells = []
        for e in ESTIMATORS:
            copies[e].append(ESTIMATORS[e](speed["copy"].per_repeat, speed["original"].per_repeat))
            halves[e].append(ESTIMATORS[e](speed["keep 50%"].per_repeat, speed["original"].per_repeat))
            cells += [f"{copies[e][-1]:.2f}x", f"{halves[e][-1]:.2f}x"]
        _, low, high = paired_speedup(speed, "keep 50%", "original")
        runs.add(run, *cells, f"{low:.2f}-{high:.2f}", f"{time.perf_counter() - start:.0f}")
    estimators = harness.Table("estimator", "keep 50% over the runs", "apart", "copy's worst distance from 1.00x")
    for e in ESTIMATORS:
        apart = max(halves[e]) / min(halves[e]) - 1
        estimators.add(e, f"{min(halves[e]):.2f}x to {max(halves[e]):.2f}x", f"{apart:.0%}",
                       f"{max(abs(c - 1) for c in copies[e]):.0%}")
    body = [f"fp32; {args.model}, batch {args.batch_size}, {args.repeats} paired repeats per run, runs back to back.",
            "", *runs.lines, "", *estimators.lines]
    headline = ", ".join(f"{e} {min(halves[e]):.2f}-{max(halves[e]):.2f}x" for e in ESTIMATORS)
    harness.write_results(args.out, "Timing noise: one measurement, repeated, read by each estimator", body,
                          headline=f"keep 50% over {args.runs} runs: {headline}")


if __name__ == "__main__":
    harness.run_script(main)
