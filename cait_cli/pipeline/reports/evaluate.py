"""The report of `cait eval` (`--json`, what `cait_cli.evaluate` returns)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .parts import JsonView, ModelSide, Speedup, Timing


@dataclass
class EvalReport(JsonView):
    """A model (and its baseline) measured: accuracy on held-out images, speed timed interleaved."""

    model: str
    baseline: Optional[str]  # its name, when there is one (its side: results["baseline"])
    data: Optional[str]
    input_size: List[int]  # (C, H, W)
    timing: Timing
    results: Dict[str, ModelSide]  # "model" and, with a baseline, "baseline"
    speedup: Optional[Speedup] = None  # of the model over the baseline
    labels_note: Optional[str] = None  # with data: why top-1/top-5 do not apply, when they do not
    skipped_images: int = 0  # with data: unreadable images

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"model": self.model, "baseline": self.baseline, "data": self.data,
                               "input_size": self.input_size}
        if self.data:
            out.update(labels_note=self.labels_note, skipped_images=self.skipped_images)
        out.update(self.timing.to_json(), results={name: side.to_json() for name, side in self.results.items()})
        if self.speedup is not None:
            out.update(self.speedup.to_json("speedup"))
        return out
