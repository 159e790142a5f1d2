"""The sweep's plot (sweep.png): measured speedup against accuracy, the original, the Pareto front.

matplotlib is an optional extra (`pip install 'cait-cli[plot]'`): without it the sweep says there is
no plot and why, and writes everything else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..atomic import atomic_file
from ..pipeline.reports.sweep import SweepPoint, SweepReport, original_accuracy

Y_LABELS = {"top1": "top-1 on the held-out images (%)",
            "agreement": "agreement with the original's top-1 (%)",
            "feature_cosine": "feature cosine to the original"}
NO_MATPLOTLIB = "matplotlib is not installed (pip install 'cait-cli[plot]')"


def draw_sweep(report: SweepReport, path: Path) -> Optional[str]:
    """Draw `report` as a PNG at `path`; None once drawn, else why there is nothing to draw."""
    key = report.accuracy
    if key is None:
        return "no held-out images, so no accuracy to plot"
    points = [p for p in report.points if p.measured and p.accuracy(key) is not None]
    if not points:
        return "no target was compressed"
    try:
        import matplotlib
    except ImportError:
        return NO_MATPLOTLIB
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1.0 if key == "feature_cosine" else 100.0
    original = scale * original_accuracy(report.original, key)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    front = sorted([(1.0, original)] + [(p.measured.ratio, scale * p.accuracy(key)) for p in points if p.pareto])
    ax.plot(*zip(*front), color="tab:orange", linewidth=1.5, zorder=1, label="Pareto front")
    shown = set()
    for point in points:
        _draw_point(ax, point, scale * point.accuracy(key), shown)
    ax.axhline(original, color="grey", linewidth=0.8, linestyle=":", zorder=0)  # the drop, read at any speed
    ax.plot([1.0], [original], marker="*", markersize=13, color="tab:blue", linestyle="none", label="original")
    ax.set_xlabel("measured speedup over the original (median of paired repeats; bars: their range)")
    ax.set_ylabel(Y_LABELS[key])
    timing = report.timing
    ax.set_title(f"{Path(report.model).name}: accuracy against measured speedup\n"
                 f"{timing.device}, {timing.precision}, batch {timing.batch_size}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return None


def _draw_point(ax, point: SweepPoint, y: float, shown: set) -> None:
    """One target: filled on the front, hollow off it, a cross outside its band; its target beside it."""
    x, speed = point.measured.ratio, point.measured
    kind = "outside its band" if not point.landed else ("on the front" if point.pareto else "landed, off the front")
    style = {"on the front": dict(marker="o", markerfacecolor="tab:orange"),
             "landed, off the front": dict(marker="o", markerfacecolor="white"),
             "outside its band": dict(marker="X", markerfacecolor="tab:red")}[kind]
    low, high = speed.low if speed.low is not None else x, speed.high if speed.high is not None else x
    ax.errorbar([x], [y], xerr=[[x - low], [high - x]], color="tab:orange", markeredgecolor="black",
                markersize=7, linestyle="none", capsize=3, zorder=2, label=None if kind in shown else kind, **style)
    shown.add(kind)
    ax.annotate(f"{point.target:g}x", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
