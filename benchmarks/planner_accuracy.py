"""How well does the planner's latency model predict the slimmed model? Measured, on this device.

For each model this measures a fresh latency table (timing how long that takes), then
builds slimmed models for a grid of plans (merge schedules x channel budgets, widths in
the channel multiple, channels chosen by weight norms as calibration starts), predicts
each one's speedup from the table, and measures all of them against the original,
interleaved in one run. Prints predicted against measured speedup per plan, and the
median and worst absolute error.

Two more things come out of the same run. A copy of the original is measured as one more
"plan": its measured speedup should be 1.00x, and how far it is not is the noise floor of
the measurement itself. And the five whole models the table is fitted on are measured
too, so whole-model fits of other forms (`FITS`) can be compared with the one the
planner uses, each fitted to those five and judged on the grid's plans.

    python -m benchmarks.planner_accuracy --out benchmarks/results/planner_accuracy_cpu.md
    python -m benchmarks.planner_accuracy --models deit_small:random@64 deit_small:random@1 --repeats 5 ...
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn

from benchmarks import harness
from cait_cli.method.base import token_counts
from cait_cli.method.variants import compressed_variant
from cait_cli.method.widths import block_widths
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup
from cait_cli.pipeline.planning.latency import (
    FIT_MODELS,
    RETIME_ERROR,
    LatencyTable,
    calibrate_latency,
    median_scale,
    robust_line,
    schedule_at,
)
from cait_cli.pipeline.planning.plan import SpeedModel

# merge blocks as fractions of the depth: none, one, two, three and four steps
SCHEDULES = [(), (0.5,), (0.33, 0.67), (0.25, 0.5, 0.75), (0.1, 0.35, 0.6, 0.85), (0.1, 0.2)]
KEEPS = [1.0, 0.75, 0.5, 0.35]


# Whole-model fits compared: features of a model, and whether the fit weighs relative error.
# "halves": the table's sum of block halves; "tokens": tokens summed over blocks; "hidden":
# MLP hidden activations (tokens x kept units) summed over blocks.
FITS = {
    "scale alone": (("halves",), True),
    "scale + per-token cost, absolute error (table v5)": (("halves", "tokens"), False),
    "scale + per-token cost, relative error": (("halves", "tokens"), True),
    "scale + per-hidden-activation cost, relative error (tables v6-v9)": (("halves", "hidden"), True),
    # SigLIP at batch 16 (table v11): plans without merges predicted up to 15% too fast, plans with
    # four merges up to 10% too slow. Do the merge steps, or the halves at merged token counts, cost
    # other than their timings say?
    "scale + scale of the merge steps, relative error": (("halves", "merges"), True),
    "scales of full-grid halves, merged halves and merge steps, relative error": (("full", "merged", "merges"), True),
}
MEDIAN_FIT = "scale alone, the median of the fit models' own scales (table v10)"
LINE_FIT = "scale + overhead per forward, Theil-Sen (table v11, used)"


def grid_of(model: nn.Module, plans) -> List[tuple]:
    """(merge schedule, keep) for each (merge fractions of the depth, keep)."""
    return [(schedule_at(model, fractions), keep) for fractions, keep in plans]


def plan_grid(model: nn.Module) -> List[tuple]:
    plans = [(fractions, keep) for fractions in SCHEDULES for keep in KEEPS if fractions or keep < 1.0]
    return grid_of(model, plans)


def features(table: LatencyTable, model: nn.Module, schedule) -> Dict[str, float]:
    counts, widths = token_counts(model), [(w.qk, w.mlp) for w in block_widths(model)]
    halves = table.halves(counts, widths, [s.block for s in schedule])
    full = max(table.tokens)  # the unmerged grid (and prefix tokens)
    at_full = (sum(table.attn(n_in, a) for (n_in, _), (a, _) in zip(counts, widths) if n_in == full)
               + sum(table.mlp(n_out, m) for (_, n_out), (_, m) in zip(counts, widths) if n_out == full))
    merges = sum(table.merge(counts[s.block][0]) for s in schedule)
    return {"halves": halves, "full": at_full, "merged": halves - at_full - merges, "merges": merges,
            "hidden": sum(n_out * m for (_, n_out), (_, m) in zip(counts, widths)),
            "tokens": sum((a + b) / 2 for a, b in counts)}


def compare_fits(table: LatencyTable, feats: Dict[str, Dict[str, float]], speedups: Dict[str, float],
                 fit_labels: List[str], original_ms: float) -> List[str]:
    """Each form of FITS fitted to the fit models' measurements, judged on the other plans (speedups
    against the original as measured, as the planner predicts them since table v8)."""
    rows_out = harness.Table("whole-model fit", "median abs. error", "worst", "mean signed error")
    fit_ms = {k: original_ms / speedups[k] for k in fit_labels}  # the fit models' measured times

    def judge(name: str, latency) -> None:
        errors = [original_ms / (table.fixed_ms + latency(k)) / speedups[k] - 1 for k in speedups
                  if k not in fit_labels]
        rows_out.add(name, f"{statistics.median(map(abs, errors)):.1%}", f"{max(map(abs, errors)):.1%}",
                     f"{statistics.mean(errors):+.1%}")

    times = torch.tensor([fit_ms[k] - table.fixed_ms for k in fit_labels], dtype=torch.float64)
    for name, (names, relative) in FITS.items():
        rows = torch.tensor([[feats[k][f] for f in names] for k in fit_labels], dtype=torch.float64)
        weights = 1 / times if relative else torch.ones_like(times)
        coef = torch.linalg.lstsq(rows * weights.unsqueeze(1), (times * weights).unsqueeze(1)).solution.squeeze(1)
        judge(name, lambda k: float(torch.tensor([feats[k][f] for f in names], dtype=torch.float64) @ coef))
    fit_halves = {k: feats[k]["halves"] for k in fit_labels}
    scale = median_scale(fit_halves, fit_ms, table.fixed_ms)
    judge(MEDIAN_FIT, lambda k: scale * feats[k]["halves"])
    slope, overhead = robust_line(fit_halves, fit_ms, table.fixed_ms)
    judge(LINE_FIT, lambda k: overhead + slope * feats[k]["halves"])
    return rows_out.lines


def table_checks(table: LatencyTable) -> str:
    """What the table's own check saw (latency.fit_table, latency.retimed)."""
    timed = "once" if table.block_timings == 1 else f"twice, the first fit missing a fit model by over {RETIME_ERROR:.0%}"
    return f"block halves timed {timed}; fit models within {table.fit_error:.1%} of the fit"


def host_drift(table: LatencyTable, original_ms: float) -> str:
    """How fast the original ran here against when the table was fitted. On a VM that shares its
    host, a neighbour contending for cache and memory bandwidth slows big activations more than
    small ones: a slower original then goes with larger speedups than the table was fitted to."""
    return (f"The original ran at {original_ms:.3f} ms per image here, {table.baseline_ms:.3f} when the table "
            f"was fitted ({original_ms / table.baseline_ms - 1:+.1%}).")


def describe(schedule, keep: float) -> str:
    merges = ",".join(str(s.block) for s in schedule) or "none"
    return f"merge {merges}; keep {keep:.0%}"


def study(name: str, weights: str, batch: int, repeats: int, multiple: int, device: torch.device
          ) -> tuple[List[str], str]:
    """The section of one model; its headline figure (median and worst error)."""
    base = load_model(name, weights).model.to(device).eval()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        table = calibrate_latency(base, device, batch, cache_dir=Path(cache), multiple=multiple)
        seconds = time.perf_counter() - start
    speed = SpeedModel(base, table, multiple)
    models: Dict[str, nn.Module] = {"original": base, "copy of the original": copy.deepcopy(base)}
    predicted: Dict[str, float] = {}
    feats: Dict[str, Dict[str, float]] = {}
    grid, fits = plan_grid(base), grid_of(base, FIT_MODELS)
    for schedule, keep in grid + fits:
        label = describe(schedule, keep)
        if label not in models:  # a fit model may be in the grid already
            models[label] = compressed_variant(base, schedule, keep, multiple).to(device)
            predicted[label] = speed.speedup(schedule, keep)
            feats[label] = features(table, models[label], schedule)
    fit_labels = [describe(schedule, keep) for schedule, keep in fits]
    measured = measure_throughput(models, (3, *base.patch_embed.img_size),
                                  SpeedConfig(batch, warmup=1, repeats=repeats, iters_per_repeat=2), device)
    noise = paired_speedup(measured, "copy of the original", "original")
    plans = harness.Table("plan", "predicted", "measured (repeat range)", "error")
    errors, speedups = [], {}
    for label, guess in predicted.items():
        ratio, low, high = paired_speedup(measured, label, "original")
        speedups[label] = ratio
        fit = " (fit model)" if label in fit_labels else ""
        if not fit:
            errors.append(abs(guess / ratio - 1))
        plans.add(f"{label}{fit}", f"{guess:.2f}x", f"{ratio:.2f}x ({low:.2f}-{high:.2f})", f"{guess / ratio - 1:+.1%}")
    median, worst = f"{statistics.median(errors):.1%}", f"{max(errors):.1%}"
    original_ms = 1e3 / measured["original"].throughput
    lines = [f"## {name} ({weights} weights)", "",
             f"Latency table measured in {seconds:.0f} s ({table_checks(table)}); {len(predicted)} plans; "
             f"batch {batch}. "
             f"Noise floor: a copy of the original measured {noise[0]:.2f}x ({noise[1]:.2f}-{noise[2]:.2f}) "
             f"against it. {host_drift(table, original_ms)}", "", *plans.lines, "",
             f"Median absolute error {median}, worst {worst} ({len(errors)} plans, fit models not counted).", "",
             "Whole-model fits compared (fitted to the fit models' measurements above, errors over the other "
             "plans):", ""]
    lines += compare_fits(table, feats, speedups, fit_labels, original_ms)
    lines.append("")
    print("\n".join(lines), flush=True)
    return lines, f"{name} (batch {batch}): median error {median}, worst {worst}"


def main() -> None:
    parser = harness.make_parser(__doc__, "channel_multiple", "out", timed_batch=64, repeats=9, device="cpu",
                                 models=harness.Default(["examples/reference:pretrained", "deit_small:random"],
                                                        "NAME:WEIGHTS pairs, each optionally @BATCH (its own "
                                                        "timing batch, e.g. deit_small:random@1)"))
    args = parser.parse_args()
    device = torch.device(args.device)
    body = [f"fp32; channel multiple {args.channel_multiple}; every plan measured against its original, interleaved.",
            ""]
    figures = []
    for spec in args.models:
        spec, _, batch = spec.partition("@")
        name, _, weights = spec.rpartition(":")
        batch = int(batch) if batch else args.batch_size
        lines, figure = study(name, weights, batch, args.repeats, args.channel_multiple, device)
        body += lines
        figures.append(figure)
    harness.write_results(args.out, "Planner accuracy: predicted against measured speedup", body,
                          headline="; ".join(figures), device=device)


if __name__ == "__main__":
    harness.run_script(main)
