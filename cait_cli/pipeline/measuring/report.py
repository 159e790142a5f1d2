"""The numbers `cait compress` reports: original vs compressed, measured side by side
(reports/compress.py makes them its report)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ...method.cost import model_macs
from ..reports.parts import ModelSide, Speedup, Timing
from .measure import (
    AccuracyResult,
    Reference,
    SpeedConfig,
    StopRule,
    count_params,
    measure_accuracy,
    measure_reference,
    measure_throughput,
    paired_speedup,
    speedup_estimate,
)
from .runtimes import Forwards


def _input_size(model: nn.Module) -> tuple:
    return (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)


# Repeats (pairs) of a measurement, at least and at most: it stops as soon as the speedup is known
# well enough to say on which side of the band it falls (band_stop), and runs longest where the
# answer is close to a band edge.
QUICK_REPEATS = (5, 11)  # a landing measurement
FINAL_REPEATS = (7, 21)  # the report's


def band_stop(num: str, den: str, band: Tuple[float, float], least: int,
              settle: int = 3) -> StopRule:
    """Stop once the last `settle` estimates agree on the side of `band` the speedup falls (below,
    in, above) and move less among themselves than they stand from the nearest band edge."""
    history: List[float] = []

    def stop(rates: Dict[str, List[float]]) -> bool:
        history.append(speedup_estimate(rates[num], rates[den]))
        recent = history[-settle:]
        if len(history) < max(least, settle) or len({_side(r, band) for r in recent}) > 1:
            return False
        spread = math.log(max(recent) / min(recent))
        margin = min(abs(math.log(recent[-1] / edge)) for edge in band)
        return spread < margin
    return stop


def _side(ratio: float, band: Tuple[float, float]) -> int:
    return -1 if ratio < band[0] else (1 if ratio > band[1] else 0)


def quick_speedup(base: nn.Module, compressed: nn.Module, device: torch.device, batch: int, amp: bool = False,
                  runtime: str = "eager", forwards: Optional[Forwards] = None,
                  band: Optional[Tuple[float, float]] = None) -> float:
    """A short interleaved measurement (for landing): repeats until the side of `band` is clear.

    amp: bf16 autocast on GPU, as the final measurement runs (a merged or pruned model gains
    less over the original in bf16 than in fp32). forwards: the job's built forwards (the
    original is compiled or exported once for every measurement).
    """
    least, most = QUICK_REPEATS
    cfg = SpeedConfig(batch_size=batch, amp=amp, warmup=1, repeats=most,
                      runtime=forwards.runtime if forwards else runtime)
    stop = band_stop("compressed", "original", band, least) if band else None
    results = measure_throughput({"original": base, "compressed": compressed}, _input_size(base), cfg, device,
                                 forwards, stop)
    return paired_speedup(results, "compressed", "original")[0]


@dataclass
class Comparison:
    """The original and the compressed model measured side by side (the core of compress's report)."""

    baseline: ModelSide
    compressed: ModelSide
    timing: Timing
    speedup: Speedup  # of the compressed model over the original
    skipped_images: int = 0  # held-out images that could not be read


def measure_models(base: nn.Module, compressed: nn.Module, val, device: torch.device, batch: int,
                   amp: bool, forwards: Optional[Forwards] = None,
                   band: Optional[Tuple[float, float]] = None, reference: Optional[Reference] = None) -> Comparison:
    """Speed (interleaved), params, MACs and, with held-out images, accuracy of both models.

    reference: the original already measured on `val` (measure_reference), e.g. once for a sweep's
    every target; None: measured here."""
    least, most = FINAL_REPEATS
    cfg = SpeedConfig(batch_size=batch, amp=amp, repeats=most, runtime=forwards.runtime if forwards else "eager")
    stop = band_stop("compressed", "original", band, least) if band else None
    speed = measure_throughput({"original": base, "compressed": compressed}, _input_size(base), cfg, device,
                               forwards, stop)
    accuracy: Dict[str, Optional[AccuracyResult]] = {"original": None, "compressed": None}
    if val is not None:
        reference = reference or measure_reference(base, val, device, amp=amp)
        accuracy["original"] = reference.accuracy
        accuracy["compressed"] = measure_accuracy(compressed, val, device, baseline=reference, amp=amp)
    sides = {name: ModelSide.measured(count_params(model), model_macs(model), speed[name], accuracy[name])
             for name, model in (("original", base), ("compressed", compressed))}
    skipped = accuracy["compressed"].skipped if accuracy["compressed"] else 0
    return Comparison(sides["original"], sides["compressed"], Timing.of(speed["original"]),
                      Speedup.of(speed, "compressed", "original"), skipped)
