"""`cait export --format onnx`: an ONNX file that is checked against PyTorch before it is kept.

The exporter is torch's own (`torch.onnx.export`, the torch.export-based one; the
TorchScript exporter is deprecated). The file is written beside its destination,
checked by onnx's checker, run by ONNX Runtime on random and (optionally) real
images, and renamed into place only if its outputs match PyTorch's within the
tolerance. Throughput under ONNX Runtime is measured with measure.py, interleaved
with the original model exported the same way.

With `quantize="int8"` that checked file goes to a temp folder instead, ONNX Runtime
quantizes it (quantize.py), and the int8 file is written only if it keeps the fp32 file's
top-1 within `max_drop` points; all of them are timed together.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ...atomic import atomic_file
from ...errors import CaitError, first_line
from ...models.loading import load_model, model_stem
from ...models.onnx_file import write_onnx
from ...models.onnx_model import (
    META_DATA_CFG,
    META_MACS,
    META_PARAMS,
    META_SOURCE,
    OnnxModel,
    is_onnx_path,
    load_onnx,
    require_onnx,
)
from ..data.sources import eval_loader, resolve_data_config
from ..measuring.measure import (
    SpeedConfig,
    SpeedResult,
    count_macs,
    count_params,
    logits_of,
    measure_throughput,
)
from ..progress import Progress, Silent
from ..reports.export import ExportReport, ExportSide, Int8Report, OnnxCheck, Tried
from ..reports.parts import Speedup, Timing
from . import quantize as int8

FORMATS = ("onnx",)
MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and newer without version conversion
DYNAMIC_CHECK_BATCHES = (1, 3)  # a dynamic-batch file is checked at two batch sizes
INT8_NAMES = {"model": "int8", "fp32": "fp32", "baseline": "baseline"}  # a timed file's name in the int8 check


@dataclass
class ExportConfig:
    model: str
    out: Optional[Path] = None  # None: NAME.onnx in the current folder
    format: str = "onnx"
    opset: int = 18
    batch_size: Optional[int] = None  # fixed batch of the file (1 unless dynamic_batch)
    dynamic_batch: bool = False
    input_size: Optional[Tuple[int, int]] = None  # (H, W); None: the model's own
    data: Optional[str] = None  # real images to check on (the model's preprocessing)
    check_images: int = 64
    baseline: Optional[str] = None  # exported the same way and timed interleaved
    tolerance: float = 1e-4  # max abs difference of logits, ONNX Runtime vs PyTorch
    bench_batch_size: Optional[int] = None  # timing batch of a dynamic-batch file (default 64)
    repeats: int = 7
    warmup: int = 2
    workers: int = 0
    weights: str = "pretrained"
    overwrite: bool = False
    seed: int = 0
    quantize: Optional[str] = None  # "int8": quantized by ONNX Runtime, checked against the fp32 file
    max_drop: float = 1.0  # points of top-1 (or agreement, without labels) the int8 file may lose
    calib_images: int = 128  # of --data's train/ split, for static quantization
    compare_images: int = 1000  # of --data's val/ split, the int8 file is compared with fp32 on
    keep_fp32: Tuple[str, ...] = int8.DEFAULT_KEEP_FP32  # layer groups and op types left in fp32
    int8_method: str = "auto"  # quantize.METHODS: auto (with --data, the faster of static and dynamic), ...


def default_out(model: str, quantize: Optional[str] = None) -> Path:
    """fashion.cait -> fashion.onnx (fashion.int8.onnx quantized); deit_small -> deit_small.onnx;
    hf-hub:org/x -> x.onnx."""
    return Path(model_stem(model) + (f".{quantize}" if quantize else "") + ".onnx")


def validate(cfg: ExportConfig) -> None:
    if cfg.format not in FORMATS:
        raise CaitError(f"unknown export format {cfg.format!r}; cait exports {', '.join(FORMATS)}")
    if cfg.opset < MIN_OPSET:
        raise CaitError(f"--opset {cfg.opset} is too old; torch's exporter writes opset {MIN_OPSET} or newer")
    if cfg.batch_size is not None and cfg.dynamic_batch:
        raise CaitError("use --batch-size B (a fixed batch) or --dynamic-batch, not both")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CaitError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.input_size is not None and min(cfg.input_size) < 1:
        raise CaitError(f"--input-size must be two positive numbers, got {cfg.input_size}")
    if cfg.tolerance < 0:
        raise CaitError(f"--tolerance must be zero or more, got {cfg.tolerance}")
    if cfg.quantize is not None and cfg.quantize not in int8.MODES:
        raise CaitError(f"unknown --quantize {cfg.quantize!r}; cait quantizes to {', '.join(int8.MODES)}")
    if cfg.quantize is not None:
        int8.candidates(cfg.int8_method, cfg.data is not None)  # refuses an unknown method, static without data
    if not 0 <= cfg.max_drop <= 100:  # also refuses NaN
        raise CaitError(f"--max-drop must be between 0 and 100 points, got {cfg.max_drop}")
    if cfg.calib_images < 1 or cfg.compare_images < 1:
        raise CaitError(f"--calib-images and --compare-images must be at least 1, got {cfg.calib_images} and "
                        f"{cfg.compare_images}")


def prepare(name: str, weights: str, input_size: Optional[Tuple[int, int]]) -> nn.Module:
    """Load `name` on the CPU in eval mode, resized to `input_size` (pos. embeddings resampled)."""
    if is_onnx_path(name):
        raise CaitError(f"{name} is already an ONNX file; export a checkpoint directory or a model name")
    model = load_model(name, weights, require_vit=False).model.cpu().eval()
    if input_size is not None and tuple(input_size) != tuple(resolve_data_config(model)["input_size"][1:]):
        try:
            model.set_input_size(img_size=tuple(input_size))
        except (AttributeError, AssertionError, RuntimeError, ValueError) as err:
            raise CaitError(f"cannot resize {name} to {input_size[0]}x{input_size[1]}: {first_line(err)}") from err
    return model


def metadata(model: nn.Module, data_cfg: Dict[str, Any], source: str) -> Dict[str, str]:
    """What the file carries besides its graph (read back by OnnxModel)."""
    meta = {META_DATA_CFG: json.dumps(data_cfg), META_SOURCE: source}
    params, macs = count_params(model), count_macs(model)
    if params is not None:
        meta[META_PARAMS] = str(params)
    if macs is not None:
        meta[META_MACS] = str(macs)
    return meta


def random_batches(input_size: Tuple[int, ...], batch: Optional[int], seed: int) -> List[torch.Tensor]:
    """Random images (B, C, H, W) at the file's batch, or at two sizes for a dynamic batch."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *input_size, generator=generator) for n in ([batch] if batch else DYNAMIC_CHECK_BATCHES)]


def data_batches(source: str, data_cfg: Dict[str, Any], batch: int, count: int, workers: int) -> List[torch.Tensor]:
    """The first `count` held-out images of `source`, preprocessed as the model expects."""
    loader, _ = eval_loader(source, data_cfg, batch, workers)
    batches, seen = [], 0
    for images, _ in loader:
        batches.append(images[: count - seen])
        seen += batches[-1].shape[0]
        if seen >= count:
            break
    return batches


def check_batches(cfg: ExportConfig, data_cfg: Dict[str, Any], batch: Optional[int]) -> Dict[str, List[torch.Tensor]]:
    checks = {"random": random_batches(tuple(data_cfg["input_size"]), batch, cfg.seed)}
    if cfg.data:
        checks["data"] = data_batches(cfg.data, data_cfg, batch or cfg.check_images, cfg.check_images, cfg.workers)
    return checks


@torch.inference_mode()
def max_difference(exported: OnnxModel, model: nn.Module, batches: List[torch.Tensor]) -> float:
    """Largest absolute difference of logits between ONNX Runtime and PyTorch over `batches`."""
    worst = 0.0
    for images in batches:
        expected = logits_of(model(images)).float()
        worst = max(worst, float((exported(images) - expected).abs().max()))
    return worst


def export_checked(model: nn.Module, out: Path, *, example: torch.Tensor, dynamic_batch: bool, opset: int,
                   meta: Dict[str, str], checks: Dict[str, List[torch.Tensor]], tolerance: float,
                   overwrite: bool) -> Tuple[OnnxModel, Dict[str, float]]:
    """Write `out` only if ONNX Runtime matches PyTorch within `tolerance` on every check batch.

    Returns the loaded file and the max difference per check ("random", "data").
    """
    with atomic_file(out, overwrite) as tmp:
        write_onnx(model, tmp, example, dynamic_batch, opset, meta)
        exported = load_onnx(tmp)
        differences = {kind: max_difference(exported, model, batches) for kind, batches in checks.items()}
        worst = max(differences.values())
        if not worst <= tolerance:  # also refuses NaN
            raise CaitError(f"ONNX Runtime's outputs differ from PyTorch's by up to {worst:.3g} (tolerance "
                            f"{tolerance:g}); {out} was not written")
    exported.path = out
    return exported, differences


def export_file(cfg: ExportConfig, progress: Progress | None = None) -> Tuple[OnnxModel, OnnxCheck]:
    """Write the checked ONNX file of `cfg.model`; returns it loaded and what was checked."""
    progress = progress or Silent()
    validate(cfg)
    require_onnx()
    out = Path(cfg.out or default_out(cfg.model))
    refuse_existing(out, cfg.overwrite)
    model = prepare(cfg.model, cfg.weights, cfg.input_size)
    data_cfg = resolve_data_config(model)
    batch = None if cfg.dynamic_batch else (cfg.batch_size or 1)
    checks = check_batches(cfg, data_cfg, batch)
    example = torch.zeros(batch or 2, *data_cfg["input_size"])  # torch.export needs 2+ for a dynamic batch
    progress.message(f"exporting {cfg.model} to {out} (opset {cfg.opset}, batch {batch or 'dynamic'})")
    exported, differences = export_checked(
        model, out, example=example, dynamic_batch=cfg.dynamic_batch, opset=cfg.opset,
        meta=metadata(model, data_cfg, cfg.model), checks=checks, tolerance=cfg.tolerance, overwrite=cfg.overwrite)
    checked_images = {kind: sum(b.shape[0] for b in batches) for kind, batches in checks.items()}
    return exported, OnnxCheck(cfg.model, str(out), cfg.format, cfg.opset, batch or "dynamic",
                               list(data_cfg["input_size"]), cfg.tolerance, differences, checked_images,
                               out.stat().st_size / 2**20)


def export(cfg: ExportConfig, progress: Progress | None = None) -> ExportReport:
    """Export `cfg.model` to ONNX, checked against PyTorch, and to int8 if asked, checked against the
    fp32 file; time it against the fp32 file and the baseline, when there are those."""
    progress = progress or Silent()
    validate(cfg)
    out = Path(cfg.out or default_out(cfg.model, cfg.quantize))
    refuse_existing(out, cfg.overwrite)
    base_difference, quantized = None, None
    with tempfile.TemporaryDirectory(prefix="cait-export-") as tmp:
        fp32_cfg = replace(cfg, out=Path(tmp) / "fp32.onnx", overwrite=True) if cfg.quantize else cfg
        exported, checked = export_file(fp32_cfg, progress)
        batch = checked.batch if isinstance(checked.batch, int) else None
        models: Dict[str, nn.Module] = {"model": exported}
        if cfg.baseline:
            progress.message(f"exporting the baseline {cfg.baseline} the same way")
            models["baseline"], base_difference = export_baseline(cfg, Path(tmp) / "baseline.onnx",
                                                                  exported.pretrained_cfg, batch)
        if cfg.quantize:
            models["fp32"] = exported
            models["model"], quantized = export_int8(cfg, out, models, batch, progress)
        speed = timing(cfg, models, exported.pretrained_cfg, batch, progress)
    return export_report(checked, models, speed, quantized, base_difference)


def export_report(checked: OnnxCheck, models: Dict[str, nn.Module], speed: Dict[str, SpeedResult],
                  quantized: Optional[Int8Report], base_difference: Optional[float]) -> ExportReport:
    """The report of the files timed in `speed`: the int8 check's top-1 on each side it measured."""
    compared = quantized.verdict.compared if quantized else None
    top1 = compared.top1 if compared else {}
    sides = {name: ExportSide(count_params(m), count_macs(m), speed[name].throughput, speed[name].throughput_min,
                              speed[name].throughput_max, top1.get(INT8_NAMES[name]),
                              base_difference if name == "baseline" else None)
             for name, m in models.items()}
    timed = replace(Timing.of(speed["model"]), runtime="onnxruntime")  # the files' forwards are ONNX Runtime's
    over_baseline = Speedup.of(speed, "model", "baseline") if "baseline" in speed else None
    over_fp32 = Speedup.of(speed, "model", "fp32") if "fp32" in speed else None
    return ExportReport(checked, sides, timed, over_baseline, quantized, over_fp32)


def refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise CaitError(f"{out} already exists; choose another --out or pass --overwrite")


def export_int8(cfg: ExportConfig, out: Path, models: Dict[str, nn.Module], batch: Optional[int],
                progress: Progress) -> Tuple[OnnxModel, Int8Report]:
    """ONNX Runtime's int8 version of the checked fp32 file models["model"], written to `out` only if it
    keeps fp32's top-1 within cfg.max_drop on held-out images (see quantize.check_int8). With
    int8_method "auto" and images, a static and a dynamic file are both made and checked, and the
    faster of those that pass is written."""
    fp32, data_cfg = models["model"], models["model"].pretrained_cfg
    images = int8.int8_images(cfg.data, data_cfg, calib_images=cfg.calib_images, compare_images=cfg.compare_images,
                              num_classes=fp32.num_classes, workers=cfg.workers, seed=cfg.seed) if cfg.data else None
    methods = int8.candidates(cfg.int8_method, images is not None)
    progress.message(f"quantizing to int8 with ONNX Runtime ({', '.join(methods)}"
                     + (f"; {images.described})" if images else ")"))
    settings = int8.Int8Settings(keep_fp32=tuple(cfg.keep_fp32))
    others = {"fp32": fp32, **({"baseline": models["baseline"]} if "baseline" in models else {})}
    random = random_batches(tuple(data_cfg["input_size"]), batch, cfg.seed)
    with tempfile.TemporaryDirectory(prefix="cait-int8-") as tmp:
        made, checks, refused = {}, {}, {}
        for method in methods:
            path = Path(tmp) / f"{method}.onnx"
            int8.quantize_file(fp32.path, path, images.calibration if images else None, settings, method)
            made[method] = load_onnx(path)
            try:
                checks[method] = int8.check_int8({"int8": made[method], **others}, images, random, cfg.max_drop, out)
            except CaitError as err:
                refused[method] = str(err)
        if not checks:
            raise CaitError(next(iter(refused.values())))
        speeds = _race({m: made[m] for m in checks}, data_cfg, batch or cfg.bench_batch_size)
        chosen = max(speeds, key=speeds.get) if speeds else next(iter(checks))
        with atomic_file(out, cfg.overwrite) as dst:
            shutil.copyfile(made[chosen].path, dst)
    result = made[chosen]  # its session holds the model; only the file moved
    result.path = out
    tried = {m: Tried(speeds.get(m), refused.get(m)) for m in methods}
    return result, Int8Report(cfg.quantize, chosen, cfg.int8_method, tried, list(settings.keep_fp32), cfg.max_drop,
                              checks[chosen], str(out), out.stat().st_size / 2**20)


def _race(files: Dict[str, nn.Module], data_cfg: Dict[str, Any], batch: Optional[int]) -> Dict[str, float]:
    """Images/s of each int8 file under ONNX Runtime, timed interleaved; one file is not timed ({})."""
    if len(files) == 1:
        return {}
    speed_cfg = SpeedConfig(batch_size=batch, warmup=1, repeats=5)
    speed = measure_throughput(files, tuple(data_cfg["input_size"]), speed_cfg, torch.device("cpu"))
    return {name: result.throughput for name, result in speed.items()}


def timing(cfg: ExportConfig, models: Dict[str, nn.Module], data_cfg: Dict[str, Any], batch: Optional[int],
           progress: Progress) -> Dict[str, SpeedResult]:
    """ONNX Runtime throughput of the files (the model, its fp32 file when it is int8, the
    baseline), interleaved."""
    progress.message("ONNX Runtime throughput on the CPU" + (", interleaved" if len(models) > 1 else ""))
    speed_cfg = SpeedConfig(batch_size=batch or cfg.bench_batch_size, warmup=cfg.warmup, repeats=cfg.repeats)
    return measure_throughput(models, tuple(data_cfg["input_size"]), speed_cfg, torch.device("cpu"))


def export_baseline(cfg: ExportConfig, path: Path, data_cfg: Dict[str, Any], batch: Optional[int]
                    ) -> Tuple[OnnxModel, float]:
    """The baseline at the model's input size, exported with the model's settings, and its max
    difference on random images (reported, not enforced: this file is only timed)."""
    base = prepare(cfg.baseline, cfg.weights, tuple(data_cfg["input_size"][1:]))
    base_cfg = resolve_data_config(base)
    if tuple(base_cfg["input_size"]) != tuple(data_cfg["input_size"]):
        raise CaitError(f"the baseline takes {tuple(base_cfg['input_size'])} inputs, the model "
                        f"{tuple(data_cfg['input_size'])}; compare models with the same input size")
    checks = {"random": random_batches(tuple(base_cfg["input_size"]), batch, cfg.seed)}
    example = torch.zeros(batch or 2, *base_cfg["input_size"])
    exported, differences = export_checked(
        base, path, example=example, dynamic_batch=batch is None, opset=cfg.opset,
        meta=metadata(base, base_cfg, cfg.baseline), checks=checks, tolerance=float("inf"), overwrite=True)
    return exported, differences["random"]
