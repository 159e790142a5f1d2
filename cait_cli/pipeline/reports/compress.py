"""The report of `cait compress` (report.json in the checkpoint, `--json`, `CompressResult.report`)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..measuring.report import Comparison
from ...version import __version__
from ..planning.plan import BAND, Attempt, Plan
from .parts import JsonView, ModelSide, Speedup, Timing, from_keys


@dataclass
class Training:
    """How the compressed model was trained: batch, processes, labels, teacher, losses, lr and step times."""

    batch_size_per_process: Optional[int] = None
    processes: int = 1
    augment: bool = False
    labels: Optional[str] = None  # "used"; "not applicable" (labels_note says why); None: no data
    labels_note: Optional[str] = None
    loss: Optional[str] = None  # distill.LOGITS_LOSSES[distill] or train.FEATURE_LOSS (a headless model)
    lr: Optional[float] = None
    lr_rule: Optional[str] = None  # how lr was chosen: "as given" or the scaling rule
    compile: Optional[bool] = None
    decode: Optional[str] = None  # where training images were decoded: "cpu" or "gpu"
    steps: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # phase: its StepTimes.to_dict()
    teacher: Optional[str] = None  # what the student learned from: "original", or the --teacher it loaded
    distill: Optional[str] = None  # how the teacher's logits taught: soft, hard or both (None: headless, features)
    token_distill: float = 0.0  # weight of the teacher's tokens averaged onto the merged grid; 0: off
    temperature: float = 1.0  # of soft distillation
    schedule: Optional[str] = None  # "phases" (each its own batches, warm-up, cosine) or "continuous" (one of each)
    score_lr: Optional[float] = None  # CDCP's channel scores' learning rate
    merge_lr: Optional[float] = None  # ATME's merge weights' learning rate

    @property
    def global_batch(self) -> Optional[int]:
        return None if self.batch_size_per_process is None else self.batch_size_per_process * self.processes

    def to_json(self) -> Dict[str, Any]:
        return {"batch_size_per_process": self.batch_size_per_process, "processes": self.processes,
                "global_batch": self.global_batch, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping) -> "Training":
        return from_keys(cls, data)


@dataclass
class CompressReport(JsonView):
    """Target against measured speedup, the original and the compressed model side by side, the plan,
    how the model was trained and every landing measurement."""

    target_speedup: float
    measured: Speedup  # the compressed model over the original (JSON: measured_speedup, _range)
    baseline: ModelSide
    compressed: ModelSide
    timing: Timing = field(default_factory=Timing)
    reached: bool = True  # measured within the tolerance below the target
    band: Optional[Tuple[float, float]] = None  # where a measured speedup counts as landed
    plan: Optional[Plan] = None  # None only in a report.json read back without one
    skipped_images: int = 0  # unreadable images, in training and in the held-out images
    training: Optional[Training] = None
    attempts: List[Attempt] = field(default_factory=list)  # the landing measurements, in order
    cait_version: Optional[str] = None  # the cait that made the model (None: a report.json older than 0.3.0)

    @classmethod
    def of(cls, target: float, tolerance: float, plan: Plan, measured: Comparison, training: Training,
           attempts: List[Attempt], skipped_in_training: int = 0) -> "CompressReport":
        """The report of a run: `measured` judged against `target` (reached: at most `tolerance`
        below it; landed: inside plan.BAND around it)."""
        return cls(target, measured.speedup, measured.baseline, measured.compressed, measured.timing,
                   reached=measured.speedup.ratio >= target * (1 - tolerance),
                   band=(BAND[0] * target, BAND[1] * target), plan=plan,
                   skipped_images=measured.skipped_images + skipped_in_training, training=training,
                   attempts=list(attempts), cait_version=__version__)

    @property
    def predicted_speedup(self) -> Optional[float]:
        return self.plan.predicted_speedup if self.plan else None

    @property
    def first_prediction_error(self) -> Optional[float]:
        """How far the planner's prediction of the first model it measured was from the measurement
        (predicted / measured - 1: +0.10 is 10% too fast); None without a landing measurement."""
        if not self.attempts:
            return None
        first = self.attempts[0]
        return first.predicted / first.measured - 1

    @property
    def landed(self) -> Optional[bool]:
        return None if self.band is None else self.band[0] <= self.measured.ratio <= self.band[1]

    def to_json(self) -> Dict[str, Any]:
        return {"target_speedup": self.target_speedup, **self.measured.to_json("measured_speedup"),
                "predicted_speedup": self.predicted_speedup, "reached": self.reached, "landed": self.landed,
                "band": None if self.band is None else list(self.band), **self.timing.to_json(),
                "baseline": self.baseline.to_json(), "compressed": self.compressed.to_json(),
                "skipped_images": self.skipped_images, "plan": self.plan.to_dict() if self.plan else None,
                "training": self.training.to_json() if self.training else None,
                "attempts": [a.to_dict() for a in self.attempts],
                "first_prediction_error": self.first_prediction_error, "cait_version": self.cait_version}

    def to_text(self) -> str:
        """report.json's text."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Mapping) -> "CompressReport":
        """The report read back from report.json; what an older file lacks takes the defaults
        (KeyError without the target, the measured speedup or the two sides)."""
        band, plan, training = data.get("band"), data.get("plan"), data.get("training")
        return cls(data["target_speedup"], Speedup.from_json(data, "measured_speedup"),
                   ModelSide.from_json(data["baseline"]), ModelSide.from_json(data["compressed"]),
                   Timing.from_json(data), reached=data.get("reached", True),
                   band=tuple(band) if band else None, plan=Plan.from_dict(plan) if plan else None,
                   skipped_images=data.get("skipped_images", 0),
                   training=Training.from_json(training) if training else None,
                   attempts=[Attempt.from_dict(a) for a in data.get("attempts", [])],
                   cait_version=data.get("cait_version"))
