"""The report of `cait sweep` (sweep.json; `cait_cli.sweep` returns its rows): one row per target, the
original beside them, the Pareto front of speed against accuracy, and the work the points shared."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional

from ...version import __version__
from .compress import CompressReport
from .parts import JsonView, ModelSide, Speedup, Timing

ACCURACIES = ("top1", "agreement", "feature_cosine")  # what a sweep is judged on, the first the data gives


@dataclass
class SweepPoint:
    """One target: its checkpoint as compress measured it against the original, or why there is none."""

    target: float
    checkpoint: str  # the checkpoint folder (written, or where it would have been)
    measured: Optional[Speedup] = None  # the compressed model over the original; None: no checkpoint
    top1: Optional[float] = None  # None also when the images' classes are not the model's
    agreement: Optional[float] = None  # share of top-1 classes equal to the original's
    feature_cosine: Optional[float] = None  # a headless model: its pooled feature against the original's
    params: Optional[int] = None
    macs: Optional[int] = None
    landed: Optional[bool] = None  # measured inside the band around its target
    reached: Optional[bool] = None  # measured at most compress's tolerance below its target
    error: Optional[str] = None  # why this target has no checkpoint (the line compress refused it with)
    pareto: bool = False  # on the front: no other point, nor the original, is as fast and more accurate
    resumed: bool = False  # read back from its checkpoint, written by an earlier run of the sweep (--resume)
    seconds: Optional[float] = None  # wall time of its compress in this run (None: resumed)

    @classmethod
    def of(cls, report: CompressReport, checkpoint: str, seconds: Optional[float] = None,
           resumed: bool = False) -> "SweepPoint":
        side = report.compressed
        return cls(report.target_speedup, checkpoint, report.measured, side.top1, side.agreement,
                   side.feature_cosine, side.params, side.macs, report.landed, report.reached, resumed=resumed,
                   seconds=seconds)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "not compressed"
        return "landed" if self.landed else "outside its band"

    def accuracy(self, key: str) -> Optional[float]:
        return getattr(self, key)

    def to_json(self) -> Dict[str, Any]:
        speed = self.measured.to_json("measured_speedup") if self.measured else {"measured_speedup": None,
                                                                                  "measured_speedup_range": None}
        return {"target_speedup": self.target, **speed, "status": self.status, "landed": self.landed,
                "reached": self.reached, "top1": self.top1, "agreement": self.agreement,
                "feature_cosine": self.feature_cosine, "params": self.params, "macs": self.macs,
                "pareto": self.pareto, "checkpoint": self.checkpoint, "error": self.error, "resumed": self.resumed,
                "seconds": self.seconds}


@dataclass
class SharedWork:
    """Work every point needs, done once for all of them."""

    what: str
    seconds: Optional[float]  # its wall time; None: not timed
    per_run: bool  # a compress run per point would do it again: counted in the saved-time estimate
    note: Optional[str] = None  # why it is not counted, when it is not


def accuracy_key(original: Optional[ModelSide]) -> Optional[str]:
    """What the points are judged on: top-1 when the images' labels are the model's classes, else
    agreement with the original, else (a headless model) the feature cosine; None without images."""
    if original is None or original.images is None:
        return None
    if original.top1 is not None:
        return "top1"
    return "feature_cosine" if original.feature_cosine is not None else "agreement"


def original_accuracy(original: ModelSide, key: str) -> float:
    """The original's own score: its top-1, or (agreeing with itself) 1.0."""
    return original.top1 if key == "top1" else 1.0


def on_front(points: List[SweepPoint], original: Optional[ModelSide]) -> List[SweepPoint]:
    """`points` with `pareto` set: measured, and no other point nor the original (at 1.0x) both at least
    as fast and as accurate, and better in one."""
    key = accuracy_key(original)
    if key is None:
        return points
    scored = [(p.measured.ratio, p.accuracy(key)) for p in points if p.measured and p.accuracy(key) is not None]
    everyone = scored + [(1.0, original_accuracy(original, key))]

    def dominated(speed: float, score: float) -> bool:
        return any(s >= speed and a >= score and (s, a) != (speed, score) for s, a in everyone)

    return [replace(p, pareto=bool(p.measured) and p.accuracy(key) is not None
                    and not dominated(p.measured.ratio, p.accuracy(key))) for p in points]


@dataclass
class SweepReport(JsonView):
    """Every target's checkpoint measured against the original, and what computing them together saved."""

    model: str
    out: str  # the sweep's folder
    points: List[SweepPoint]
    original: Optional[ModelSide] = None  # as the first point measured it (accuracy is the same for every point)
    timing: Timing = field(default_factory=Timing)  # how the first point's speedup was timed (all alike)
    shared: List[SharedWork] = field(default_factory=list)  # empty when every point was resumed
    seconds: Optional[float] = None  # this run's wall time
    labels_note: Optional[str] = None  # why top-1 does not apply, when it does not
    plot: Optional[str] = None  # the plot's file, once drawn
    plot_skipped: Optional[str] = None  # why there is no plot, when there is none
    config: Dict[str, Any] = field(default_factory=dict)  # the options every point shared (--resume compares them)
    cait_version: str = __version__  # the cait that ran the sweep

    @property
    def computed(self) -> int:
        """Points compressed in this run (not resumed, not refused)."""
        return sum(p.seconds is not None and p.error is None for p in self.points)

    @property
    def saved_seconds(self) -> float:
        """An estimate of the wall time saved against one compress run per computed point: each of those
        runs would have done the shared work counted per run again (measured here once)."""
        once = sum(work.seconds or 0.0 for work in self.shared if work.per_run)
        return max(0, self.computed - 1) * once

    @property
    def accuracy(self) -> Optional[str]:
        return accuracy_key(self.original)

    def to_json(self) -> Dict[str, Any]:
        return {"model": self.model, "out": self.out, "accuracy": self.accuracy, **self.timing.to_json(),
                "original": self.original.to_json() if self.original else None,
                "points": [p.to_json() for p in self.points],
                "shared": [asdict(work) for work in self.shared], "saved_seconds_estimate": self.saved_seconds,
                "seconds": self.seconds, "labels_note": self.labels_note, "plot": self.plot,
                "plot_skipped": self.plot_skipped, "config": self.config, "cait_version": self.cait_version}
