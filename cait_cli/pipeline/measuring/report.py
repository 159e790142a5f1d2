"""The numbers `cait compress` reports: original vs compressed, measured side by side."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ...method.cost import model_macs
from ..planning.plan import BAND, Plan
from .measure import (
    AccuracyResult,
    SpeedConfig,
    count_params,
    measure_accuracy,
    measure_throughput,
    paired_speedup,
)


def _input_size(model: nn.Module) -> tuple:
    return (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)


# Paired repeats of the final measurement: its median must stay inside the band that the
# quick landing measurement (nine pairs) aimed at, on a CPU whose single timings scatter by +-20%.
FINAL_REPEATS = 21


def quick_speedup(base: nn.Module, compressed: nn.Module, device: torch.device, batch: int,
                  amp: bool = False) -> float:
    """A short interleaved measurement (for landing), median of paired ratios.

    Nine pairs: a shared CPU's single timings scatter by +-20%, and landing needs the
    median to within a few percent. amp: bf16 autocast on GPU, as the final measurement
    runs (a merged or pruned model gains less over the original in bf16 than in fp32).
    """
    cfg = SpeedConfig(batch_size=batch, amp=amp, warmup=1, repeats=9, iters_per_repeat=2)
    results = measure_throughput({"original": base, "compressed": compressed}, _input_size(base), cfg, device)
    return paired_speedup(results, "compressed", "original")[0]


def measure_models(base: nn.Module, compressed: nn.Module, val, device: torch.device, batch: int,
                   amp: bool) -> Dict[str, Any]:
    """Speed (interleaved), params, MACs and, with held-out images, accuracy of both models."""
    cfg = SpeedConfig(batch_size=batch, amp=amp, repeats=FINAL_REPEATS)
    speed = measure_throughput({"original": base, "compressed": compressed}, _input_size(base), cfg, device)
    out: Dict[str, Any] = {"speed": speed, "speedup": paired_speedup(speed, "compressed", "original")}
    for name, model in (("original", base), ("compressed", compressed)):
        out[f"{name}_params"] = count_params(model)
        out[f"{name}_macs"] = model_macs(model)
    if val is not None:
        out["original_acc"] = measure_accuracy(base, val, device, amp=amp)
        out["compressed_acc"] = measure_accuracy(compressed, val, device, baseline=base, amp=amp)
    return out


def _side(params: int, macs: int, speed, acc: Optional[AccuracyResult]) -> Dict[str, Any]:
    side = {"params": params, "macs": macs, "throughput": speed.throughput,
            "throughput_min": speed.throughput_min, "throughput_max": speed.throughput_max,
            "peak_memory_mb": speed.peak_memory_mb}
    if acc is not None:
        side.update(top1=acc.top1, top5=acc.top5, agreement=acc.agreement, images=acc.n)
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
        "threads": first.threads,
        "baseline": _side(measured["original_params"], measured["original_macs"], first,
                          measured.get("original_acc")),
        "compressed": _side(measured["compressed_params"], measured["compressed_macs"], speed["compressed"],
                            compressed_acc),
        "skipped_images": compressed_acc.skipped if compressed_acc else 0,
        "plan": plan.to_dict(),
    }


def report_json(report: Dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=lambda o: asdict(o)) + "\n"
