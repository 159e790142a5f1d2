"""The numbers `cait compress` reports: original vs compressed, measured side by side."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ...method.cost import model_macs
from ..planning.plan import BAND, Plan
from .measure import (
    AccuracyResult,
    SpeedConfig,
    StopRule,
    count_params,
    measure_accuracy,
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


def measure_models(base: nn.Module, compressed: nn.Module, val, device: torch.device, batch: int,
                   amp: bool, forwards: Optional[Forwards] = None,
                   band: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """Speed (interleaved), params, MACs and, with held-out images, accuracy of both models."""
    least, most = FINAL_REPEATS
    cfg = SpeedConfig(batch_size=batch, amp=amp, repeats=most, runtime=forwards.runtime if forwards else "eager")
    stop = band_stop("compressed", "original", band, least) if band else None
    speed = measure_throughput({"original": base, "compressed": compressed}, _input_size(base), cfg, device,
                               forwards, stop)
    out: Dict[str, Any] = {"speed": speed, "speedup": paired_speedup(speed, "compressed", "original")}
    for name, model in (("original", base), ("compressed", compressed)):
        out[f"{name}_params"] = count_params(model)
        out[f"{name}_macs"] = model_macs(model)
    if val is not None:
        out["original_acc"] = measure_accuracy(base, val, device, amp=amp)
        out["compressed_acc"] = measure_accuracy(compressed, val, device, baseline=base, amp=amp)
    return out


def _model_side(params: int, macs: int, speed, acc: Optional[AccuracyResult]) -> Dict[str, Any]:
    side = {"params": params, "macs": macs, "throughput": speed.throughput,
            "throughput_min": speed.throughput_min, "throughput_max": speed.throughput_max,
            "peak_memory_mb": speed.peak_memory_mb}
    if acc is not None:
        side.update(top1=acc.top1, top5=acc.top5, agreement=acc.agreement, feature_cosine=acc.feature_cosine,
                    images=acc.n)
    return side


def build_report(target: float, plan: Plan, measured: Dict[str, Any], tolerance: float) -> Dict[str, Any]:
    """report.json: target vs measured speedup, baseline and compressed sides, the plan."""
    speed = measured["speed"]
    ratio, low, high = measured["speedup"]
    first = speed["original"]
    compressed_acc = measured.get("compressed_acc")
    return {
        "target_speedup": target,
        "measured_speedup": ratio,
        "measured_speedup_range": [low, high],
        "predicted_speedup": plan.predicted_speedup,
        "reached": ratio >= target * (1 - tolerance),
        "landed": BAND[0] * target <= ratio <= BAND[1] * target,
        "band": [BAND[0] * target, BAND[1] * target],
        "device": first.device,
        "batch_size": first.batch_size,
        "precision": first.precision,
        "runtime": first.runtime,
        "repeats": len(first.per_repeat),
        "threads": first.threads,
        "baseline": _model_side(measured["original_params"], measured["original_macs"], first,
                          measured.get("original_acc")),
        "compressed": _model_side(measured["compressed_params"], measured["compressed_macs"], speed["compressed"],
                            compressed_acc),
        "skipped_images": compressed_acc.skipped if compressed_acc else 0,
        "plan": plan.to_dict(),
    }


def report_json(report: Dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=lambda o: asdict(o)) + "\n"
