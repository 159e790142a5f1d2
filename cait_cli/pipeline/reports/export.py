"""The report of `cait export` (`--json`, what `cait_cli.export` returns, the int8 part of a model card)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Union

from ..export.quantize import Int8Verdict
from .parts import JsonView, Speedup, Timing


@dataclass
class OnnxCheck:
    """An ONNX file as written and checked against PyTorch."""

    model: str  # what was exported
    out: str
    format: str
    opset: int
    batch: Union[int, str]  # the file's fixed batch, or "dynamic"
    input_size: List[int]  # (C, H, W)
    tolerance: float
    max_difference: Dict[str, float]  # per check ("random", "data"): largest |ONNX Runtime - PyTorch| of the logits
    checked_images: Dict[str, int]  # per check
    file_mb: float

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class ExportSide:
    """One file timed under ONNX Runtime: size (recorded at export) and speed."""

    params: Optional[int]
    macs: Optional[int]
    throughput: float  # images/s, the median of the repeats
    throughput_min: float
    throughput_max: float
    top1: Optional[float] = None  # the int8 check's, on the images it compared on
    max_difference: Optional[float] = None  # the baseline's file against PyTorch (reported, not enforced)

    def to_json(self, with_top1: bool) -> Dict[str, Any]:
        """with_top1: the int8 check compared top-1 on images (a None top-1 is then kept)."""
        out = {key: value for key, value in asdict(self).items() if key not in ("top1", "max_difference")}
        if with_top1:
            out["top1"] = self.top1
        if self.max_difference is not None:
            out["max_difference"] = self.max_difference
        return out


@dataclass
class Tried:
    """One way of quantizing, made and checked: its speed in the race (None: not raced) or why it was refused."""

    images_per_second: Optional[float] = None
    refused: Optional[str] = None


@dataclass
class Int8Report:
    """The int8 part of an export: how the file was made, what it was checked on, where it was written."""

    mode: str  # "int8" (quantize.MODES)
    method: str  # the way the written file was made: "static" or "dynamic"
    int8_method: str  # the way asked for: auto, static or dynamic
    tried: Dict[str, Tried]
    keep_fp32: List[str]  # layer groups and op types left in fp32
    max_drop: float
    verdict: Int8Verdict
    out: str
    file_mb: float

    def raced(self) -> List[str]:
        """The methods the file was chosen among: those made, checked and not refused."""
        return [method for method, tried in self.tried.items() if not tried.refused]

    def to_json(self) -> Dict[str, Any]:
        """The report's "quantize" part (where the file went is at the report's top level)."""
        return {"mode": self.mode, "method": self.method, "int8_method": self.int8_method,
                "tried": {method: asdict(tried) for method, tried in self.tried.items()},
                "keep_fp32": list(self.keep_fp32), "max_drop": self.max_drop, **self.verdict.to_json()}


@dataclass
class ExportReport(JsonView):
    """The file written, checked against PyTorch (and, int8, against the fp32 file), and timed under
    ONNX Runtime interleaved with the fp32 file and the baseline when there are those."""

    checked: OnnxCheck  # the fp32 file (with int8, a temporary one the int8 file was made from)
    results: Dict[str, ExportSide]  # "model" (the file written), "fp32" (with int8), "baseline"
    timing: Timing
    speedup: Optional[Speedup] = None  # the file over the baseline's
    int8: Optional[Int8Report] = None
    int8_speedup: Optional[Speedup] = None  # the int8 file over the fp32 one

    @property
    def out(self) -> str:
        return self.int8.out if self.int8 else self.checked.out

    @property
    def file_mb(self) -> float:
        return self.int8.file_mb if self.int8 else self.checked.file_mb

    def to_json(self) -> Dict[str, Any]:
        out = self.checked.to_json()
        if self.int8 is not None:
            out.update(out=self.out, file_mb=self.file_mb, precision=self.int8.mode, quantize=self.int8.to_json(),
                       fp32_file_mb=self.checked.file_mb)
        with_top1 = self.int8 is not None and self.int8.verdict.compared is not None
        out["results"] = {name: side.to_json(with_top1) for name, side in self.results.items()}
        out.update(runtime=self.timing.runtime, device=self.timing.device, bench_batch_size=self.timing.batch_size,
                   threads=self.timing.threads, repeats=self.timing.repeats)
        for key, speedup in (("speedup", self.speedup), ("int8_speedup", self.int8_speedup)):
            if speedup is not None:
                out.update(speedup.to_json(key))
        return out
