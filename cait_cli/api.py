"""The public entry points: compress, sweep, evaluate, export and push from Python, as the `cait` commands do.

Each function takes what its command takes as arguments, plus keyword options named like the command's
options (`--calib-steps 50` is `calib_steps=50`). The defaults are the config dataclasses' (CompressConfig,
EvalConfig, ExportConfig) and push's, and the CLI's options take theirs from `defaults` below, so the two
cannot differ. Errors raise CaitError with one line; progress is silent unless `progress=` is given
(True: bars and lines on the terminal, or any object with the methods of pipeline.progress.Progress).
"""
from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .errors import CaitError
from .interface.hub import PushResult
from .interface.hub import push as push_checkpoint
from .interface.plot import draw_sweep
from .models.loading import model_stem
from .pipeline.compress import CompressResult
from .pipeline.compress import compress as run_compress
from .pipeline.evaluate import EvalConfig
from .pipeline.evaluate import evaluate as run_evaluate
from .pipeline.export.onnx_export import ExportConfig
from .pipeline.export.onnx_export import export as run_export
from .pipeline.export.quantize import parse_keep_fp32
from .pipeline.job import CompressConfig
from .pipeline.progress import Progress, Silent
from .pipeline.reports.evaluate import EvalReport
from .pipeline.reports.export import ExportReport
from .pipeline.reports.sweep import SweepPoint, SweepReport
from .pipeline.sweep import SweepConfig
from .pipeline.sweep import sweep as run_sweep

TARGET_SPEEDUP = 1.9  # compress's default target (CompressConfig has none: a run names its target)
NOT_SWEPT = ("target_speedup", "plan", "plan_only")  # compress's options a sweep sets per point, or has no use for
ProgressArg = Union[Progress, bool, None]
PathLike = Union[str, Path]


def compress(model: PathLike, target_speedup: float = TARGET_SPEEDUP, data: Optional[PathLike] = None, *,
             out: Optional[PathLike] = None, progress: ProgressArg = None, **options: Any) -> CompressResult:
    """Compress a ViT to `target_speedup` (measured, against the original) and write the checkpoint to
    `out` (default: NAME.cait), as `cait compress` does.

    `data`: an ImageFolder root (train/ and val/), a folder of images or a timm dataset name;
    `options`: CompressConfig's fields (calib_steps=300, finetune_steps=1000, batch_size=64, ...).
    Returns a CompressResult: `.report` (what `cait compress --json` writes, a dict), `.out`, `.reached`
    (`.typed_report`: the same report typed, a `CompressReport`). Like `evaluate` and `export`, it
    makes glibc keep freed memory in the calling process for its lifetime, so CPU timings pay no page
    faults (`CAIT_SYSTEM_MALLOC=1` before the call leaves malloc alone).

    >>> import cait_cli
    >>> model, images = "deit_small", "/data/imagenet"  # doctest: +SKIP
    >>> result = cait_cli.compress(model, target_speedup=1.5, data=images, calib_steps=8, finetune_steps=8)
    >>> print(result.out)
    deit_small.cait
    >>> result.report["compressed"]["macs"] < result.report["baseline"]["macs"]
    True
    >>> small = cait_cli.load("deit_small.cait")  # an nn.Module, as timm's
    """
    _check_options("compress", options)
    cfg = CompressConfig(model=str(model), target_speedup=target_speedup, data=_str(data),
                         out=Path(out) if out is not None else Path(model_stem(str(model)) + ".cait"), **options)
    return run_compress(cfg, _progress(progress))


def evaluate(model: PathLike, data: Optional[PathLike] = None, baseline: Optional[PathLike] = None, *,
             progress: ProgressArg = None, **options: Any) -> Dict[str, Any]:
    """Accuracy on `data` (its val/ if present) and throughput, timed interleaved with `baseline` when
    given, as `cait eval` does; returns the report (what `cait eval --json` writes).

    `options`: EvalConfig's fields (batch_size, device="auto", runtime="auto", repeats=7, ...).
    Top-1/top-5 are None when the data's classes are not the model's (`report["labels_note"]` says why).

    >>> report = cait_cli.evaluate("deit_small.cait", data=images, baseline=model)
    >>> sorted(report["results"])
    ['baseline', 'model']
    >>> report["speedup"] > 0
    True
    """
    return evaluate_report(model, data, baseline, progress=progress, **options).to_json()


def evaluate_report(model: PathLike, data: Optional[PathLike] = None, baseline: Optional[PathLike] = None, *,
                    progress: ProgressArg = None, **options: Any) -> EvalReport:
    """`evaluate`'s report typed, as `cait eval` prints it (`.to_json()` is what `evaluate` returns)."""
    _check_options("evaluate", options)
    cfg = EvalConfig(model=str(model), data=_str(data), baseline=_str(baseline), **options)
    return run_evaluate(cfg, _progress(progress))


def export(model: PathLike, *, progress: ProgressArg = None, **options: Any) -> Dict[str, Any]:
    """Export a model to ONNX, refused unless ONNX Runtime's outputs match PyTorch's, as `cait export`
    does; returns the report (what `cait export --json` writes). Needs the onnx extra.

    `options`: ExportConfig's fields (out, dynamic_batch=False, quantize=None or "int8", data, ...);
    keep_fp32 takes a tuple or the CLI's comma-separated text.

    >>> report = cait_cli.export("deit_small.cait", dynamic_batch=True)
    >>> print(report["out"])
    deit_small.onnx
    """
    return export_report(model, progress=progress, **options).to_json()


def export_report(model: PathLike, *, progress: ProgressArg = None, **options: Any) -> ExportReport:
    """`export`'s report typed, as `cait export` prints it (`.to_json()` is what `export` returns)."""
    _check_options("export", options)
    if isinstance(options.get("keep_fp32"), str):
        options["keep_fp32"] = parse_keep_fp32(options["keep_fp32"])
    return run_export(ExportConfig(model=str(model), **options), _progress(progress))


def push(directory: PathLike, repo_id: str, **options: Any) -> PushResult:
    """Upload a compressed checkpoint with a generated model card to the Hugging Face Hub, as `cait push`
    does; with dry_run=True write what would be uploaded beside it and upload nothing.

    `options`: private, revision, token, dry_run, dry_run_out, commit_message, with_onnx, quantize, data.

    >>> result = cait_cli.push("deit_small.cait", "my-org/deit-small-cait", dry_run=True)
    >>> result.files
    ['README.md', 'config.json', 'model.safetensors', 'report.json']
    >>> print(result.url)
    deit_small.cait.push-preview
    """
    _check_options("push", options)
    return push_checkpoint(directory, repo_id, **options)


def sweep(model: PathLike, speedups: Sequence[float] = (), data: Optional[PathLike] = None, *,
          out: Optional[PathLike] = None, progress: ProgressArg = None, **options: Any) -> List[SweepPoint]:
    """Compress `model` once per target in `speedups`, into `out` (default: NAME.sweep) as 1.5x.cait,
    1.9x.cait, ..., with sweep.json and the plot sweep.png (with matplotlib), as `cait sweep` does.

    Every target is compressed as `compress` does it, on what does not depend on the target prepared
    once (the model, the data, the latency table, the original's outputs on the held-out images).
    `options`: compress's, less target_speedup, plan and plan_only; resume=True skips the targets whose
    checkpoint is written and continues an interrupted one. Targets beyond what the model can reach
    are refused (CaitError, one line) before any training. Returns the rows of its table, one
    `SweepPoint` per target (`.to_json()`: its entry in sweep.json's "points"); `sweep_report` returns
    the whole report.

    >>> rows = cait_cli.sweep(model, [1.3, 1.6], data=images, calib_steps=8, finetune_steps=8)
    >>> [(row.target, row.checkpoint) for row in rows]
    [(1.3, 'deit_small.sweep/1.3x.cait'), (1.6, 'deit_small.sweep/1.6x.cait')]
    >>> rows[1].macs < rows[0].macs
    True
    """
    return sweep_report(model, speedups, data, out=out, progress=progress, **options).points


def sweep_report(model: PathLike, speedups: Sequence[float] = (), data: Optional[PathLike] = None, *,
                 out: Optional[PathLike] = None, progress: ProgressArg = None, **options: Any) -> SweepReport:
    """`sweep`'s whole report, as `cait sweep` prints it and writes sweep.json (`.to_json()`)."""
    _check_options("sweep", options)
    stem = Path(out) if out is not None else Path(model_stem(str(model)) + ".sweep")
    template = CompressConfig(model=str(model), target_speedup=TARGET_SPEEDUP, data=_str(data), out=stem, **options)
    return run_sweep(SweepConfig(template, [float(s) for s in speedups]), _progress(progress), draw=draw_sweep)


def defaults(command: str) -> Dict[str, Any]:
    """Every keyword option of `command` (compress, evaluate, export, push, sweep) and its default:
    the CLI's options take theirs from here."""
    if command == "push":
        return _keyword_defaults(push_checkpoint)
    if command == "sweep":
        shared = {name: value for name, value in defaults("compress").items() if name not in NOT_SWEPT}
        own = {name: value for name, value in _keyword_defaults(sweep).items() if name != "progress"}
        return {**shared, **own}
    config = {"compress": CompressConfig, "evaluate": EvalConfig, "export": ExportConfig}[command]
    own = {name: value for name, value in _keyword_defaults(globals()[command]).items() if name != "progress"}
    return {**{f.name: f.default for f in fields(config) if f.default is not MISSING}, **own}


def _keyword_defaults(function: Any) -> Dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _check_options(command: str, options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(defaults(command)))
    if unknown:
        raise CaitError(f"{command} has no option {', '.join(map(repr, unknown))}; its options are "
                        f"{', '.join(sorted(defaults(command)))}")


def _progress(progress: ProgressArg) -> Progress:
    if progress is True:
        from rich.console import Console

        from .interface.progress import RichProgress

        return RichProgress(Console())
    return progress or Silent()


def _str(source: Optional[PathLike]) -> Optional[str]:
    return None if source is None else str(source)
