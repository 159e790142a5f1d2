"""The proof's table (Markdown) and plot (PNG), from the rows benchmarks/proof.py measured.

    python -m benchmarks.proof_report benchmarks/results/proof_cpu.json   # re-render OUT.md and OUT.png
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks import harness  # noqa: E402

TITLE = "CAIT against its peers at equal measured speedup (Fashion-MNIST test set)"
FLOOR_PT = 12  # the plot shows top-1 down to this many points under the reference
CONTROL = "reference, same training"  # the uncompressed reference given every method's training budget
MARKERS = {CONTROL: "*", "cait": "o", "atme": "s", "cdcp": "^", "tome": "v", "tome (off the shelf)": "x",
           "torch-pruning": "D"}


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _timing(runs: int) -> str:
    if runs == 1:
        return "in one run (median of paired ratios; in brackets their range)"
    return (f"in each of {runs} runs (the median of the runs' medians of paired ratios; in brackets the runs' "
            "medians, lowest and highest)")


def _speedup(row: Dict[str, Any]) -> str:
    """"1.95x (1.90-2.01)": the runs' medians when the row was timed in several runs, else the paired ratios."""
    runs = row.get("speedup_runs") or []
    low, high = (min(runs), max(runs)) if len(runs) > 1 else row["speedup_range"]
    return f"{row['measured_speedup']:.2f}x ({low:.2f}-{high:.2f})"


def table(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    """The results' body: settings, every row, the keep-band sweep and the seed spread."""
    ref = meta["reference_top1"]
    lines = [
        f"Throughput at batch {meta['bench_batch_size']}, fp32, every model interleaved with the reference "
        f"{_timing(meta.get('timing_runs', 1))}. Training budget of every trained method: {meta['steps']} steps of batch "
        f"{meta['batch_size']}, lr {meta['lr']:g}, "
        f"{meta.get('recipe', 'distillation (soft) from the reference plus cross-entropy')}. "
        f"Total time {meta['seconds'] / 60:.0f} min.", "",
        f"Reference `{meta['reference']}`: top-1 {_pct(ref)}%, {meta['reference_params'] / 1e6:.3f}M params, "
        f"{meta['reference_macs'] / 1e6:.1f}M MACs.", ""]
    every = harness.Table("target", "method", "setting", "seed", "measured speedup", "top-1 (%)", "Δ top-1 (pt)",
                          "agreement (%)", "params (M)", "MMACs", "2-D grid out")
    for r in rows:
        grid = "yes" if r["keeps_grid"] else "no"
        if r["measured_speedup"] is None:
            every.add(f"{r['target']:g}x", r["method"], f"not reached: {r['note']}", r.get("seed", 0),
                      *["—"] * 6, grid)
            continue
        delta = "—" if r["top1"] is None else f"{100 * (r['top1'] - ref):+.2f}"
        every.add(f"{r['target']:g}x", r["method"], r["setting"], r.get("seed", 0),
                  _speedup(r),
                  _pct(r["top1"]), delta, _pct(r["agreement"]), f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e6:.1f}",
                  grid)
    lines += [*every.lines, "", "2-D grid out: whether the patch tokens after the last block still form a regular "
              "grid that a dense head (segmentation, detection) can take: ATME halves grid axes, channel pruning "
              "keeps every token, ToMe merges image-dependent pairs anywhere in the image.", ""]
    return lines + keep_sweep(rows, ref, meta.get("seed", 0)) + seed_spread(rows)


def headline(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """CAIT at each target and the control, main seed: measured speedup and top-1 against the reference."""
    ref, seed = meta["reference_top1"], meta.get("seed", 0)
    figures = []
    for r in _measured(rows):
        if r["method"] in ("cait", CONTROL) and r.get("seed", 0) == seed:
            name = "control" if r["method"] == CONTROL else f"cait {r['target']:g}x"
            figures.append(f"{name}: {r['measured_speedup']:.2f}x, {100 * (r['top1'] - ref):+.2f} pt")
    return "; ".join(figures) or "no row measured"


def _measured(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rows if r["measured_speedup"] is not None and r["top1"] is not None]


def _keep(row: Dict[str, Any]) -> float:
    """CDCP's kept fraction from a CAIT row's setting ("merge after 3+7, keep 63%")."""
    match = re.search(r"keep (\d+)%", row["setting"])
    return int(match.group(1)) / 100 if match else 1.0


def keep_sweep(rows: List[Dict[str, Any]], ref: float, seed: int) -> List[str]:
    """At each target with keep-band rows: CAIT at every budget (ATME alone keeps 100%), least pruned first,
    with the run's main seed (the keep bands run with it only)."""
    banded = {r["target"] for r in rows if r["method"].startswith("cait (keep")}
    lines: List[str] = []
    for target in sorted(banded):
        sweep = [r for r in _measured(rows) if r["target"] == target and r.get("seed", 0) == seed
                 and (r["method"].startswith("cait") or r["method"] == "atme")]
        sweep_table = harness.Table("budget", "plan", "measured speedup", "top-1 (%)", "Δ top-1 (pt)")
        for r in sorted(sweep, key=_keep, reverse=True):
            budget = "planner's choice" if r["method"] == "cait" else r["method"].replace("cait ", "")
            sweep_table.add(budget, r["setting"], f"{r['measured_speedup']:.2f}x", _pct(r["top1"]),
                      f"{100 * (r['top1'] - ref):+.2f}")
        lines += [f"## What pruning buys at {target:g}x: CAIT at every CDCP budget (seed {seed})", "",
                  *sweep_table.lines, ""]
    return lines


def seed_spread(rows: List[Dict[str, Any]]) -> List[str]:
    """Top-1 of every method (and setting) run with two seeds, side by side: the noise a gap must beat."""
    by_seed: Dict[tuple, Dict[int, float]] = {}
    for r in _measured(rows):
        key = (r["target"], r["method"], r["setting"].split(",")[0] if r["method"] == "torch-pruning" else "")
        by_seed.setdefault(key, {})[r.get("seed", 0)] = r["top1"]
    pairs = {k: v for k, v in by_seed.items() if len(v) == 2}
    if not pairs:
        return []
    first, second = sorted(next(iter(pairs.values())))
    spread_table = harness.Table("target", "method", f"top-1 seed {first} (%)", f"top-1 seed {second} (%)",
                          "difference (pt)")
    for (target, method, setting), top1 in pairs.items():
        spread_table.add(f"{target:g}x", f"{method} ({setting})" if setting else method, _pct(top1[first]),
                  _pct(top1[second]), f"{100 * (top1[second] - top1[first]):+.2f}")
    return [f"## Seed spread (seeds {first} and {second})", "", *spread_table.lines, ""]


def best_points(rows: List[Dict[str, Any]], method: str, seed: int) -> List[tuple]:
    """(measured speedup, top-1 %) of `method`'s best row at each target, first seed only
    (torch-pruning has one row per setting; the plot shows its best)."""
    best: Dict[float, Dict[str, Any]] = {}
    for r in rows:
        if r["method"] != method or r.get("seed", 0) != seed or r["measured_speedup"] is None or r["top1"] is None:
            continue
        if r["target"] not in best or r["top1"] > best[r["target"]]["top1"]:
            best[r["target"]] = r
    return sorted((r["measured_speedup"], 100 * r["top1"]) for r in best.values())


def plot(meta: Dict[str, Any], rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    floor = 100 * meta["reference_top1"] - FLOOR_PT  # keep the close calls readable; lower points sit on the floor
    off_scale = 0
    for method, marker in MARKERS.items():
        points = best_points(rows, method, meta.get("seed", 0))
        if not points:
            continue
        shown = [(x, max(y, floor)) for x, y in points]
        ax.plot(*zip(*shown), marker=marker, label=method, linestyle="--" if "shelf" in method else "-")
        for (x, y), (_, y_shown) in zip(points, shown):
            if y < floor:  # stacked labels, one per off-scale point
                ax.annotate(f"{method}: {y:.1f}% (off scale)", (x, y_shown), textcoords="offset points",
                            xytext=(-6, 8 + 11 * off_scale), ha="right", fontsize=7)
                off_scale += 1
    ax.set_ylim(floor - 0.5, None)
    ax.axhline(100 * meta["reference_top1"], color="grey", linewidth=1, label="reference")
    ax.set_xlabel("measured speedup over the reference (CPU, batch %d)" % meta["bench_batch_size"])
    ax.set_ylabel("top-1 on the test set (%)")
    ax.set_title("Fashion-MNIST: accuracy against measured speedup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(meta: Dict[str, Any], rows: List[Dict[str, Any]], out: Path) -> None:
    """OUT.md (the run that made `meta`, the table, the History of earlier runs) and OUT.png."""
    harness.write_results(harness.beside(out, ".md"), TITLE, table(meta, rows), headline(meta, rows),
                          run=harness.Run.of(meta))
    plot(meta, rows, harness.beside(out, ".png"))


def main() -> None:
    parser = harness.make_parser(__doc__)
    parser.add_argument("json", type=Path, help="OUT.json of benchmarks/proof.py")
    path = parser.parse_args().json
    data = json.loads(path.read_text())
    render(data["meta"], data["rows"], path)


if __name__ == "__main__":
    harness.run_script(main)
