"""`cait compress`: plan, calibrate CDCP, slim, fine-tune, measure, export.

    result = compress(CompressConfig(model="deit_small", target_speedup=1.9,
                                     data="/data/imagenet", out=Path("deit_small.cait")))
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import CaitError
from ..method.block import IMPORTANCE_SOURCES
from ..method.slim import slim
from ..models.checkpoint import save_checkpoint
from ..models.loading import LoadedModel, load_model
from ..models.onnx_model import is_onnx_path
from ..models.spec import CaitSpec
from .data.batches import StepBatches
from .data.device_decode import DECODES, training_batches
from .data.sources import DataBundle, open_data, resolve_data_config
from .distributed import (
    Cluster,
    default_workers,
    join,
    leave,
    main_first,
    on_main,
    total,
)
from .job import LATENCY_TABLE, LOADING, REFERENCE, CompressConfig, Job, Prepared, resolved
from .measuring.allocator import keep_freed_memory
from .measuring.measure import Reference, is_headless, measure_reference, resolve_device
from .measuring.runtimes import Forwards, resolve_runtime
from .measuring.report import measure_models
from .phases import SCHEDULES, calibrated_student, finetune, landed
from .planning.landing import band
from .planning.latency import LatencyTable, calibrate_latency
from .planning.plan import Plan, ScoreFn, describe_plan, make_plan
from .planning.saved import fitted_plan, read_plan
from .planning.scoring import kl_score
from .progress import Progress, Silent
from .reports.compress import CompressReport, Training
from .state import RunDir, RunRecord, RunState
from .training.distill import DISTILL_KINDS
from .training.teacher import ORIGINAL, check_student, check_teacher, check_token_teacher, input_note
from .training.train import loss_name


@dataclass
class CompressResult:
    plan: Plan
    out: Optional[Path] = None
    typed_report: Optional[CompressReport] = None  # None with plan_only
    main: bool = True  # False on the torchrun ranks other than 0 (they print nothing)

    @property
    def report(self) -> Dict[str, Any]:
        """What `cait compress --json` writes (report.json's content); {} with plan_only."""
        return self.typed_report.to_json() if self.typed_report else {}

    @property
    def reached(self) -> bool:
        return self.typed_report.reached if self.typed_report else True


def check_config(cfg: CompressConfig) -> None:
    """Refuse bad options before any work is done or anything is written."""
    if cfg.target_speedup < 1.0:
        raise CaitError(f"--target-speedup must be at least 1.0, got {cfg.target_speedup:g}")
    if cfg.calib_steps < 0 or cfg.finetune_steps < 0:
        raise CaitError("--calib-steps and --finetune-steps must be 0 or more")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CaitError("--batch-size must be at least 1")
    if cfg.decode not in DECODES:
        raise CaitError(f"--decode must be one of {', '.join(DECODES)}, got {cfg.decode!r}")
    if cfg.channel_multiple < 1:
        raise CaitError(f"--channel-multiple must be at least 1, got {cfg.channel_multiple}")
    if not 0.25 <= cfg.max_keep <= 1.0:
        raise CaitError(f"--max-keep must be between 0.25 and 1.0, got {cfg.max_keep:g}")
    if not 0.25 <= cfg.min_keep <= cfg.max_keep:
        raise CaitError(f"--min-keep must be between 0.25 and --max-keep ({cfg.max_keep:g}), got {cfg.min_keep:g}")
    if cfg.max_keep < 1.0 and cfg.method == "atme":
        raise CaitError("--max-keep asks CDCP to prune; --method atme does not prune")
    if cfg.workers is not None and cfg.workers < 0:
        raise CaitError("--workers must be 0 or more")
    if cfg.importance is not None and cfg.importance not in IMPORTANCE_SOURCES:
        raise CaitError(f"--importance must be one of {', '.join(IMPORTANCE_SOURCES)}, got {cfg.importance!r}")
    if cfg.distill not in DISTILL_KINDS:
        raise CaitError(f"--distill must be one of {', '.join(DISTILL_KINDS)}, got {cfg.distill!r}")
    for option, value in (("--lr", cfg.lr), ("--score-lr", cfg.score_lr), ("--merge-lr", cfg.merge_lr),
                          ("--temperature", cfg.temperature)):
        if value is not None and not 0 < value < math.inf:
            raise CaitError(f"{option} must be above 0, got {value:g}")
    if not 0 <= cfg.token_distill < math.inf:
        raise CaitError(f"--token-distill must be 0 (off) or more, got {cfg.token_distill:g}")
    if cfg.schedule not in SCHEDULES:
        raise CaitError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.teacher is not None and is_onnx_path(cfg.teacher):
        raise CaitError(f"--teacher {cfg.teacher} is an exported ONNX file; pass the checkpoint or model it came from")
    cfg.plan_config(cfg.target_speedup)  # refuses an unknown --method
    if cfg.plan is not None:
        read_plan(Path(cfg.plan))  # a missing or unreadable --plan, before the latency table is timed
    if cfg.plan_only:
        return
    if cfg.out.exists() and not (cfg.overwrite or cfg.resume):
        raise CaitError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    if cfg.resume and not RunDir.beside(cfg.out).exists():
        raise CaitError(f"nothing to resume: no interrupted run for {cfg.out}")
    if cfg.data is None and (cfg.calib_steps or cfg.finetune_steps):
        raise CaitError("--data is needed for calibration and fine-tuning; "
                        "pass --calib-steps 0 --finetune-steps 0 for an untrained speed study")


def compress(cfg: CompressConfig, progress: Progress | None = None,
             prepared: Optional[Prepared] = None) -> CompressResult:
    """Run the whole job; CaitError (one line) for anything the user can fix.

    prepared: what `prepare` made for options that differ from cfg's in the target, --out and
    --resume alone (a sweep prepares once for all its targets); None: prepared here.
    Under torchrun every process calls this: they train data-parallel, rank 0 alone
    times, plans, measures and writes (see distributed.py).
    """
    cluster, device = join(resolve_device(cfg.device))
    try:
        return _compress(cfg, progress or Silent(), cluster, device, prepared)
    finally:
        leave(cluster)


def _compress(cfg: CompressConfig, progress: Progress, cluster: Cluster, device: torch.device,
              prepared: Optional[Prepared]) -> CompressResult:
    on_main(cluster, lambda: (check_config(cfg), resolve_runtime(cfg.runtime, device)))  # before any slow work
    lr_rule = "as given" if cfg.lr is not None else "1e-4 x global batch / 64 (linear)"
    cfg = resolved(cfg, device, cluster.world)  # batch, lr, compile: what runs, recorded and compared on resume
    run = RunDir.beside(cfg.out, writes=cluster.is_main)
    resumed, saved = on_main(cluster, run.load) if cfg.resume else (None, None)
    prepared = prepared or prepare(cfg, progress, cluster, device)
    if prepared.batches is not None:
        prepared.batches.skipped = 0  # this run's unreadable training images (a sweep's batches serve many)
    torch.manual_seed(cfg.seed)  # after preparing: a sweep's point starts where a run of its own would
    job = Job(**prepared.parts(), cfg=cfg, progress=progress, run=run, resumed=resumed)
    plan = on_main(cluster, lambda: _resumed_plan(saved, cfg, cluster) or _plan(job))
    job.progress.message(describe_plan(plan))
    if cfg.plan_only:
        return CompressResult(plan, main=cluster.is_main)
    if job.labels_note:
        job.progress.message(job.labels_note)
    # calibration learns which channels to prune: with none to prune, its steps go to fine-tuning
    record = RunRecord(jsonable_config(cfg), cluster.world, plan, lr_rule,
                       calibrate=saved.calibrate if saved else plan.keep < 1.0,
                       attempts=saved.attempts if saved else [])
    student = calibrated_student(job, record)
    landed(job, record, student)
    slim_model = finetune(job, record, slim(copy.deepcopy(student)), student.state_dict())
    return _finish(job, record, slim_model)


def prepare(cfg: CompressConfig, progress: Progress, cluster: Cluster, device: torch.device) -> Prepared:
    """What a run needs before it looks at its target: the model, the data, the latency table, the
    planner's judge; `seconds` says how long each took. cfg: resolved (batch size concrete)."""
    keep_freed_memory()  # the whole run (a sweep's too), trained and timed alike (allocator.py)
    torch.manual_seed(cfg.seed)  # random weights (--weights random) are the seed's
    start = time.perf_counter()
    loaded = main_first(cluster, lambda: load_model(cfg.model, cfg.weights))  # one download, then the cache
    if loaded.is_compressed:
        raise CaitError(f"{cfg.model} is already compressed; compress its original model instead")
    base = loaded.model.to(device).eval()
    teacher = _teacher(cfg, base, progress, cluster, device)
    data_cfg = resolve_data_config(base)
    bundle = _open_data(cfg, data_cfg, base) if cfg.data else None
    batches = None if bundle is None else training_batches(
        bundle.train, data_cfg, batch_size=cfg.batch_size, seed=cfg.seed, workers=_workers(cfg), device=device,
        decode=cfg.decode, augment=cfg.augment, rank=cluster.rank, world=cluster.world)
    bench_batch = cfg.bench_batch_size or (256 if device.type == "cuda" else 64)
    amp = cfg.amp and device.type == "cuda"  # bf16 autocast: training and every speed measurement
    runtime = resolve_runtime(cfg.runtime, device)
    seconds = {LOADING: time.perf_counter() - start}

    def timed_table() -> LatencyTable:
        progress.message(f"timing blocks on {device} (batch {bench_batch}, runtime {runtime}) to calibrate the planner")
        return calibrate_latency(base, device, bench_batch, cache_dir=cfg.latency_cache, multiple=cfg.channel_multiple,
                                 amp=amp, runtime=runtime)

    start = time.perf_counter()
    table = on_main(cluster, timed_table)
    seconds[LATENCY_TABLE] = time.perf_counter() - start
    val = bundle.val if bundle else None

    @functools.cache
    def reference() -> Optional[Reference]:
        if val is None:
            return None
        start = time.perf_counter()
        measured = measure_reference(base, val, device, amp=amp)
        seconds[REFERENCE] = time.perf_counter() - start
        return measured

    scored = batches is not None and cfg.weights == "pretrained"
    return Prepared(device=device, cluster=cluster, loaded=loaded, base=base, teacher=teacher, table=table,
                    forwards=Forwards(runtime, amp), bench_batch=bench_batch, amp=amp, batches=batches, val=val,
                    labels_note=bundle.why_unlabelled if bundle else None,
                    score=_kl_score(base, batches, device, cfg.channel_multiple) if scored else None,
                    reference=reference, seconds=seconds)


def _teacher(cfg: CompressConfig, base: nn.Module, progress: Progress, cluster: Cluster,
             device: torch.device) -> nn.Module:
    """What the student learns from: the original, or --teacher's model once checked against it."""
    check_student(base, cfg.teacher, cfg.distill, cfg.token_distill)
    if cfg.teacher is None:
        return base
    try:
        loaded = main_first(cluster, lambda: load_model(cfg.teacher, require_vit=False))
    except CaitError as err:
        raise CaitError(f"--teacher: {err}") from err
    teacher = loaded.model.to(device).eval()
    check_teacher(teacher, base, cfg.teacher, device)
    if cfg.token_distill > 0:
        check_token_teacher(teacher, base, cfg.teacher)
    note = input_note(teacher, base, cfg.teacher)
    if note:
        progress.message(note)
    return teacher


def _workers(cfg: CompressConfig) -> int:
    return default_workers() if cfg.workers is None else cfg.workers


def _open_data(cfg: CompressConfig, data_cfg: Dict[str, Any], base: nn.Module) -> DataBundle:
    return open_data(cfg.data, data_cfg, val_source=cfg.val_data, batch_size=cfg.batch_size,
                     workers=_workers(cfg), seed=cfg.seed, max_val=cfg.max_val_images, train_augment=cfg.augment,
                     num_classes=getattr(base, "num_classes", None))


def _resumed_plan(saved: Optional[RunRecord], cfg: CompressConfig, cluster: Cluster) -> Optional[Plan]:
    if saved is None:
        return None
    _check_resumable(saved, cfg, cluster)
    return saved.plan


def _plan(job: Job) -> Plan:
    plan_cfg = job.cfg.plan_config(job.cfg.target_speedup)
    if job.cfg.plan is not None:
        return fitted_plan(read_plan(Path(job.cfg.plan)), job.base, job.table, plan_cfg)
    return make_plan(job.base, job.table, plan_cfg, job.score)


def _finish(job: Job, record: RunRecord, slim_model: nn.Module) -> CompressResult:
    """Rank 0 measures against the original, then writes the checkpoint and report.json atomically."""
    skipped = total(job.cluster, job.batches.skipped if job.batches else 0)
    report = on_main(job.cluster, lambda: _measure_and_write(job, record, slim_model, skipped))
    return CompressResult(record.plan, job.cfg.out, report, main=job.cluster.is_main)


def _measure_and_write(job: Job, record: RunRecord, slim_model: nn.Module, skipped: int) -> CompressReport:
    cfg, plan = job.cfg, record.plan
    job.progress.message("measuring the compressed model against the original")
    measured = measure_models(job.base, slim_model, job.val, job.device, job.bench_batch, job.amp, job.forwards,
                              band=band(cfg.target_speedup), reference=job.reference())
    job.forwards.forget(slim_model)  # (a sweep's forwards outlive this run)
    report = CompressReport.of(cfg.target_speedup, cfg.tolerance, plan, measured, _training(job, record),
                               record.attempts, skipped_in_training=skipped)
    spec = CaitSpec.of(slim_model, job.loaded.architecture, job.loaded.model_args)
    source = {"base_model": _base_model_id(job.loaded), "target_speedup": cfg.target_speedup,
              "measured_speedup": report.measured.ratio, "runtime": report.timing.runtime,
              "device": report.timing.device, "precision": report.timing.precision, "plan": plan.to_dict()}
    save_checkpoint(slim_model.cpu().eval(), cfg.out, spec, source,
                    extra_files={"report.json": report.to_text()}, overwrite=cfg.overwrite or cfg.resume)
    job.run.remove()
    return report


def _training(job: Job, record: RunRecord) -> Training:
    """How this run trained, for its report."""
    cfg = job.cfg
    return Training(batch_size_per_process=cfg.batch_size, processes=job.cluster.world, augment=cfg.augment,
                    labels="not applicable" if job.labels_note else ("used" if job.batches else None),
                    labels_note=job.labels_note, loss=loss_name(job.base, cfg.distill), lr=cfg.lr,
                    lr_rule=record.lr_rule, compile=cfg.compile, decode=job.decode, steps=job.step_times,
                    teacher=cfg.teacher or ORIGINAL, distill=None if is_headless(job.base) else cfg.distill,
                    token_distill=cfg.token_distill, temperature=cfg.temperature, schedule=cfg.schedule,
                    score_lr=cfg.score_lr, merge_lr=cfg.lr if cfg.merge_lr is None else cfg.merge_lr)


def jsonable_config(cfg: CompressConfig) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


RESUME_KEYS = ("model", "target_speedup", "data", "calib_steps", "finetune_steps", "batch_size", "lr", "seed",
               "weights", "method", "augment", "channel_multiple", "max_keep", "min_keep", "runtime", "importance",
               "plan", "teacher", "distill", "token_distill", "temperature", "schedule", "score_lr", "merge_lr")


def changed_options(saved: Dict[str, Any], cfg: CompressConfig, keys: Sequence[str] = RESUME_KEYS) -> List[str]:
    """The options among `keys` (as --flags) whose value in cfg (resolved) differs from a saved config's."""
    now = jsonable_config(cfg)
    defaults = {f.name: f.default for f in fields(CompressConfig)}  # options older runs did not record
    return ["--" + k.replace("_", "-") for k in keys if saved.get(k, defaults[k]) != now.get(k)]


def _check_resumable(record: RunRecord, cfg: CompressConfig, cluster: Cluster) -> None:
    changed = changed_options(record.config, cfg)
    if changed:
        raise CaitError(f"cannot resume: {', '.join(changed)} differ from the interrupted run")
    if record.processes != cluster.world:
        raise CaitError(f"cannot resume: the interrupted run had {record.processes} processes and this one "
                        f"{cluster.world}; the global batch would change (start as many with torchrun)")


def _base_model_id(loaded: LoadedModel) -> str:
    hub_id = getattr(loaded.model, "pretrained_cfg", {}).get("hf_hub_id")
    return hub_id or loaded.source


SCORE_IMAGES = 256  # the planner scores on the first images of batch 0, the same for any number of processes


def _kl_score(base: nn.Module, batches: StepBatches, device: torch.device, multiple: int) -> ScoreFn:
    """KL of a plan's untrained model from the original, on the first images of batch 0."""
    return kl_score(base, lambda: batches.batch(0, limit=SCORE_IMAGES)[0].to(device), multiple)
