"""Trustworthy numbers: throughput measured interleaved, accuracy and agreement.

One implementation serves `cait eval` and the report of `cait compress`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...errors import CaitError
from ...method.cost import model_macs
from ...models.onnx_model import OnnxModel
from .allocator import keep_freed_memory
from .runtimes import Forwards, precision, resolve_runtime


def resolve_device(name: str = "auto") -> torch.device:
    """auto: cuda if available, else cpu. CaitError for a bad or unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CaitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaitError(f"device {name!r} asked for, but no CUDA GPU is available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CaitError(f"device {name!r} asked for, but there is no CUDA GPU {device.index} here "
                        f"({torch.cuda.device_count()} found)")
    if device.type not in ("cpu", "cuda"):
        raise CaitError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


@dataclass
class SpeedConfig:
    batch_size: Optional[int] = None  # None: 64 on CPU, 256 on GPU
    warmup: int = 2
    repeats: int = 7  # at most; fewer when `stop` (measure_throughput's) says the answer is known
    # Forwards per timed run: at least this, more when one forward of the fastest model is shorter than
    # min_run_seconds (short runs are mostly timer and scheduler noise). One is enough when a forward
    # outlasts it (DeiT-S at batch 64 on 2 cores: 1-2.5 s); a second only doubled every measurement.
    iters_per_repeat: int = 1
    min_run_seconds: float = 0.2
    amp: bool = False  # bfloat16 autocast, GPU only
    dtype: torch.dtype = torch.float32  # of the input images (the models' own precision)
    runtime: str = "eager"  # runtimes.RUNTIMES: what serves the models while they are timed

    def batch_for(self, device: torch.device) -> int:
        return self.batch_size or (256 if device.type == "cuda" else 64)

    def check(self, device: torch.device) -> str:
        """The runtime these settings time under on `device` (auto resolved); CaitError if they cannot
        run there (callers may check before slow work)."""
        return resolve_runtime(self.runtime, device)


@dataclass
class SpeedResult:
    name: str
    throughput: float  # images/s, the median over repeats
    throughput_min: float
    throughput_max: float
    per_repeat: List[float] = field(default_factory=list)
    batch_size: int = 0
    device: str = ""
    precision: str = "fp32"
    threads: int = 0
    peak_memory_mb: Optional[float] = None  # CUDA only: max allocated during this model's runs
    runtime: str = "eager"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Called after every round of repeats with the images/s measured so far, per model; True ends the
# measurement early (the answer is known well enough to decide).
StopRule = Callable[[Dict[str, List[float]]], bool]


@torch.inference_mode()
def measure_throughput(models: Dict[str, nn.Module], input_size: Tuple[int, int, int], cfg: SpeedConfig,
                       device: torch.device, forwards: Optional[Forwards] = None,
                       stop: Optional[StopRule] = None) -> Dict[str, SpeedResult]:
    """Images/s of every model, timed round-robin so machine noise hits all of them alike.

    Each model runs under cfg.runtime (its forward built, compiled or exported first, untimed;
    `forwards` keeps built forwards for models timed again). The round-robin order reverses every
    other repeat, so no model always runs first. Freed memory stays in the process from now on
    (allocator.py), so no model pays page faults that a serving process would not.
    """
    keep_freed_memory()
    runtime = cfg.check(device)
    batch = cfg.batch_for(device)
    amp = cfg.amp and device.type == "cuda"
    forwards = forwards or Forwards(runtime, amp)
    images = forwards.images(batch, input_size, cfg.dtype, device)
    times: Dict[str, List[float]] = {name: [] for name in models}
    peaks: Dict[str, float] = {}
    built: Dict[str, Callable[[], object]] = {}

    def run(forward: Callable[[], object], iters: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            forward()
        synchronize(device)
        return time.perf_counter() - start

    for name, model in models.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        built[name] = forwards.of(model, images)
        for _ in range(cfg.warmup):
            run(built[name], cfg.iters_per_repeat)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    # short runs (a small model, a small batch) are mostly timer and scheduler noise
    shortest = min(run(forward, 1) for forward in built.values())
    iters = max(cfg.iters_per_repeat, math.ceil(cfg.min_run_seconds / max(shortest, 1e-6)))
    order = list(built.items())
    for repeat in range(cfg.repeats):
        # A B, then B A: whatever running second costs (or gains) falls on every model alike
        for name, forward in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(run(forward, iters))
        if stop is not None and stop({name: [batch * iters / t for t in ts] for name, ts in times.items()}):
            break
    label = precision(forwards.runtime, amp)
    return {name: _speed_result(name, t, batch * iters, batch, device, label, peaks.get(name), forwards.runtime)
            for name, t in times.items()}


# A speedup is the median of the paired per-repeat ratios. Of the readings compared in
# benchmarks/results/timing_noise_cpu.md (each model's fastest run, the quietest half of the pairs),
# the median moved least from run to run and read a copy of the model closest to 1.00x.
def speedup_estimate(num: Sequence[float], den: Sequence[float]) -> float:
    """The speedup of `num` over `den` from their per-repeat rates (paired: same repeats)."""
    return statistics.median(a / b for a, b in zip(num, den))


def _speed_result(name: str, seconds: List[float], images: int, batch: int, device: torch.device,
                  label: str, peak: Optional[float], runtime: str) -> SpeedResult:
    rates = [images / s for s in seconds]
    return SpeedResult(name, statistics.median(rates), min(rates), max(rates), rates, batch,
                       device_name(device), label, torch.get_num_threads(), peak, runtime)


def paired_speedup(results: Dict[str, SpeedResult], num: str, den: str) -> Tuple[float, float, float]:
    """The speedup num/den (speedup_estimate), and the min and max of the per-repeat ratios."""
    a, b = results[num].per_repeat, results[den].per_repeat
    ratios = [x / y for x, y in zip(a, b)]
    return speedup_estimate(a, b), min(ratios), max(ratios)


@dataclass
class AccuracyResult:
    n: int
    top1: Optional[float] = None
    top5: Optional[float] = None
    agreement: Optional[float] = None  # top-1 equal to the baseline's
    feature_cosine: Optional[float] = None  # headless: mean cosine of the pooled feature to the baseline's
    skipped: int = 0


def is_headless(model: nn.Module) -> bool:
    """A backbone shipped without a classifier: its output is a pooled feature, not logits."""
    return getattr(model, "num_classes", None) == 0


def logits_of(output) -> torch.Tensor:
    """Distilled DeiTs may return (cls, dist) logits; average them as timm does at inference."""
    if isinstance(output, (tuple, list)):
        return sum(output) / len(output)
    return output


@dataclass
class Reference:
    """A model measured once on held-out images: its accuracy, and its outputs batch by batch (kept on
    the CPU), which the agreement of other models is counted against without running it again."""

    accuracy: AccuracyResult
    outputs: List[torch.Tensor]  # per batch of the loader, in its order: logits, or a headless model's features
    headless: bool


Baseline = Union[nn.Module, Reference]  # what agreement is counted against: a model run alongside, or its record


def measure_accuracy(model: nn.Module, loader: Iterable, device: torch.device, *,
                     baseline: Optional[Baseline] = None, amp: bool = False,
                     max_batches: Optional[int] = None) -> AccuracyResult:
    """Top-1/top-5 on labelled images (label -1: unlabelled) and agreement with a baseline (a model, or
    a Reference measured on the same loader).

    Against a headless baseline (its output a feature, not logits) agreement of argmaxes means
    nothing: the mean cosine of the two pooled features is measured instead.
    """
    return _accuracy(model, loader, device, baseline, amp, max_batches)[0]


def measure_reference(model: nn.Module, loader: Iterable, device: torch.device, *, amp: bool = False) -> Reference:
    """`model`'s accuracy on `loader` and its outputs, for agreement counted later (one pass)."""
    accuracy, outputs = _accuracy(model, loader, device, None, amp, None, keep_outputs=True)
    return Reference(accuracy, outputs, is_headless(model))


@torch.inference_mode()
def _accuracy(model: nn.Module, loader: Iterable, device: torch.device, baseline: Optional[Baseline], amp: bool,
              max_batches: Optional[int], keep_outputs: bool = False) -> Tuple[AccuracyResult, List[torch.Tensor]]:
    model.eval()
    if isinstance(baseline, nn.Module):
        baseline.eval()
    recorded = isinstance(baseline, Reference)
    headless = baseline.headless if recorded else baseline is not None and is_headless(baseline)
    n = labelled = correct1 = correct5 = agree = 0
    cosine = 0.0
    outputs: List[torch.Tensor] = []
    autocast = amp and device.type == "cuda"
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = logits_of(model(images)).float()
            if recorded:
                reference = baseline.outputs[i].to(device)
            else:
                reference = logits_of(baseline(images)).float() if baseline is not None else None
        if keep_outputs:
            outputs.append(logits.cpu())
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        known = labels >= 0
        labelled += int(known.sum())
        correct1 += int((top[:, 0] == labels)[known].sum())
        correct5 += int((top == labels.unsqueeze(1)).any(dim=1)[known].sum())
        if headless:
            cosine += float(torch.nn.functional.cosine_similarity(logits, reference, dim=-1).sum())
        elif reference is not None:
            agree += int((top[:, 0] == reference.argmax(-1)).sum())
        n += images.shape[0]
        num_classes = logits.shape[-1]
    if n == 0:
        raise CaitError("no images to evaluate")
    return AccuracyResult(
        n=n,
        top1=correct1 / labelled if labelled else None,
        top5=correct5 / labelled if labelled and num_classes >= 5 else None,
        agreement=agree / n if baseline is not None and not headless else None,
        feature_cosine=cosine / n if headless else None,
        skipped=int(getattr(loader, "skipped", 0)),
    ), outputs


def count_params(model: nn.Module) -> Optional[int]:
    """Parameters of a PyTorch model; an ONNX model reports what its file recorded at export."""
    if isinstance(model, OnnxModel):
        return model.params
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module) -> Optional[int]:
    """MACs of a (CAIT) ViT by the cost model; None for a model it cannot count."""
    if isinstance(model, OnnxModel):
        return model.macs
    try:
        return model_macs(model)
    except (AttributeError, TypeError):
        return None
