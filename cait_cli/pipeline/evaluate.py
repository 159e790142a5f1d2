"""`cait eval`: accuracy and speed of a model, optionally against a baseline.

The same measuring code as `cait compress`'s report (measure.py): throughput
interleaved with the baseline in one run, accuracy with the model's own
preprocessing, agreement of top-1 predictions with the baseline's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import CaitError
from ..models.loading import load_model
from ..models.onnx_model import is_onnx_path
from .data.sources import Batches, WithoutLabels, eval_loader, loader, resolve_data_config
from .data.sources import _why_labels_are_dropped as why_labels_are_dropped  # compress's rule, not a copy
from .measuring.measure import (
    AccuracyResult,
    SpeedConfig,
    count_macs,
    count_params,
    measure_accuracy,
    measure_throughput,
    resolve_device,
)
from .measuring.runtimes import resolve_runtime
from .progress import Progress, Silent
from .reports.evaluate import EvalReport
from .reports.parts import ModelSide, Speedup, Timing


@dataclass
class EvalConfig:
    model: str
    data: Optional[str] = None
    baseline: Optional[str] = None
    batch_size: Optional[int] = None  # None: 64 on CPU, 256 on GPU
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on GPU
    runtime: str = "auto"  # runtimes.RUNTIMES; auto: the device's default (an ONNX file: onnxruntime)
    workers: int = 4
    repeats: int = 7
    warmup: int = 2
    weights: str = "pretrained"
    max_batches: Optional[int] = None


def evaluate(cfg: EvalConfig, progress: Progress | None = None) -> EvalReport:
    """Measure `cfg.model` (and `cfg.baseline`); its report (`.to_json()`: as plain data)."""
    progress = progress or Silent()
    device = _device(cfg)
    runtime = _runtime(cfg, device)  # before the accuracy pass, not after it
    models = {"model": load_model(cfg.model, cfg.weights, require_vit=False).model.to(device).eval()}
    if cfg.baseline:
        models["baseline"] = load_model(cfg.baseline, cfg.weights, require_vit=False).model.to(device).eval()
    data_cfg = resolve_data_config(models["model"])
    _check_inputs(models, data_cfg)
    batch_size = cfg.batch_size or getattr(models["model"], "fixed_batch", None)
    amp = cfg.amp and device.type == "cuda"
    accuracy: Dict[str, AccuracyResult] = {}
    labels_note, skipped = None, 0
    if cfg.data:
        progress.message(f"accuracy on {cfg.data}")
        images, labels_note = held_out_images(cfg, data_cfg, batch_size or 64, models["model"])
        for name, model in models.items():
            reference = models.get("baseline") if name == "model" else None
            accuracy[name] = measure_accuracy(model, images, device, baseline=reference, amp=amp,
                                              max_batches=cfg.max_batches)
        skipped = images.skipped
    progress.message(f"throughput on {device}, interleaved")
    speed_cfg = SpeedConfig(batch_size=batch_size, warmup=cfg.warmup, repeats=cfg.repeats, amp=amp, runtime=runtime)
    speed = measure_throughput(models, tuple(data_cfg["input_size"]), speed_cfg, device)
    sides = {name: ModelSide.measured(count_params(m), count_macs(m), speed[name], accuracy.get(name))
             for name, m in models.items()}
    return EvalReport(cfg.model, cfg.baseline, cfg.data, list(data_cfg["input_size"]), Timing.of(speed["model"]),
                      sides, Speedup.of(speed, "model", "baseline") if "baseline" in speed else None,
                      labels_note=labels_note, skipped_images=skipped)


def held_out_images(cfg: EvalConfig, data_cfg: Dict[str, Any], batch_size: int, model: nn.Module
                    ) -> Tuple[Batches, Optional[str]]:
    """`cfg.data`'s held-out images and, when their classes are not the model's (compress's rule), the
    line saying so: their labels are then dropped, so top-1/top-5 are None and agreement still counts."""
    images, _ = eval_loader(cfg.data, data_cfg, batch_size, cfg.workers)
    why = why_labels_are_dropped(images.dataset, data_cfg.get("label_names"), getattr(model, "num_classes", None))
    if why is None:
        return images, None
    note = why.split(", so ")[0] + ", so top-1/top-5 are not applicable"  # compress's line also says it distils
    return loader(WithoutLabels(images.dataset), batch_size, cfg.workers), note


def _device(cfg: EvalConfig) -> torch.device:
    """The device to measure on; exported ONNX files run on ONNX Runtime's CPU provider."""
    if not any(name and is_onnx_path(name) for name in (cfg.model, cfg.baseline)):
        return resolve_device(cfg.device)
    if cfg.device not in ("auto", "cpu"):
        raise CaitError(f"ONNX files run on ONNX Runtime's CPU provider here, not on {cfg.device!r}; "
                        "use --device cpu (or auto)")
    return torch.device("cpu")


def _runtime(cfg: EvalConfig, device: torch.device) -> str:
    """The runtime to time under: an exported ONNX file runs on ONNX Runtime, and so does the
    baseline beside it (exported the same way)."""
    if any(name and is_onnx_path(name) for name in (cfg.model, cfg.baseline)):
        if cfg.runtime not in ("auto", "onnxruntime"):
            raise CaitError(f"an ONNX file runs on ONNX Runtime, not under --runtime {cfg.runtime}; "
                            "use --runtime onnxruntime (or auto)")
        return resolve_runtime("onnxruntime", device)
    return resolve_runtime(cfg.runtime, device)


def _check_inputs(models: Dict[str, nn.Module], data_cfg: Dict[str, Any]) -> None:
    if "baseline" in models:
        other = resolve_data_config(models["baseline"])["input_size"]
        if tuple(other) != tuple(data_cfg["input_size"]):
            raise CaitError(f"the baseline takes {tuple(other)} inputs, the model {tuple(data_cfg['input_size'])}; "
                            "compare models with the same input size")
