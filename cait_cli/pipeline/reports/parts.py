"""What the reports are made of: one measured model, how the timing ran, a speedup."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterator, Optional, Type, TypeVar

from ..measuring.measure import AccuracyResult, SpeedResult, paired_speedup

R = TypeVar("R")


def from_keys(cls: Type[R], data: Mapping) -> R:
    """A flat record from JSON whose keys are its field names; a key an older file lacks takes the
    field's default."""
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class JsonView(Mapping):
    """Reads by JSON key (report["results"]["model"]["top1"]), as when reports were dicts: a view
    of `to_json()`, read-only."""

    def to_json(self) -> Dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


ACCURACY_KEYS = ("top1", "top5", "agreement", "feature_cosine", "images")


@dataclass
class ModelSide:
    """One model of a comparison as measured: its size, its speed and, on held-out images, its accuracy."""

    params: Optional[int] = None
    macs: Optional[int] = None
    throughput: Optional[float] = None  # images/s, the median of the repeats
    throughput_min: Optional[float] = None  # its slowest and fastest repeat
    throughput_max: Optional[float] = None
    peak_memory_mb: Optional[float] = None  # CUDA only
    top1: Optional[float] = None  # None also when the images' classes are not the model's
    top5: Optional[float] = None
    agreement: Optional[float] = None  # share of top-1 classes equal to the other model's
    feature_cosine: Optional[float] = None  # a headless model: mean cosine of its pooled feature to the other's
    images: Optional[int] = None  # held-out images; None: accuracy not measured (its keys are left out)

    @classmethod
    def measured(cls, params: Optional[int], macs: Optional[int], speed: SpeedResult,
                 accuracy: Optional[AccuracyResult] = None) -> "ModelSide":
        scores = {} if accuracy is None else dict(top1=accuracy.top1, top5=accuracy.top5,
                                                  agreement=accuracy.agreement,
                                                  feature_cosine=accuracy.feature_cosine, images=accuracy.n)
        return cls(params, macs, speed.throughput, speed.throughput_min, speed.throughput_max,
                   speed.peak_memory_mb, **scores)

    def to_json(self) -> Dict[str, Any]:
        measured = self.images is not None
        return {key: value for key, value in asdict(self).items() if measured or key not in ACCURACY_KEYS}

    @classmethod
    def from_json(cls, data: Mapping) -> "ModelSide":
        return from_keys(cls, data)


@dataclass
class Timing:
    """How the throughputs were measured: on what, at what batch and precision, under which runtime,
    and from how many repeats (defaults: as an older report.json left them)."""

    device: str = ""
    batch_size: int = 0
    precision: str = "fp32"
    runtime: str = "eager"
    repeats: int = 0
    threads: int = 0

    @classmethod
    def of(cls, speed: SpeedResult) -> "Timing":
        return cls(speed.device, speed.batch_size, speed.precision, speed.runtime,
                   len(speed.per_repeat), speed.threads)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "Timing":
        return from_keys(cls, data)


@dataclass
class Speedup:
    """How many times faster one model ran than another (the median of paired ratios), and the lowest and
    highest ratio of one pair of repeats (timed interleaved)."""

    ratio: float
    low: Optional[float] = None
    high: Optional[float] = None

    @classmethod
    def of(cls, speed: Dict[str, SpeedResult], num: str, den: str) -> "Speedup":
        return cls(*paired_speedup(speed, num, den))

    def to_json(self, key: str) -> Dict[str, Any]:
        """{key: ratio, key_range: [low, high]}: "speedup", "measured_speedup", "int8_speedup"."""
        return {key: self.ratio, f"{key}_range": [self.low, self.high]}

    @classmethod
    def from_json(cls, data: Mapping, key: str) -> "Speedup":
        return cls(data[key], *(data.get(f"{key}_range") or (None, None)))
