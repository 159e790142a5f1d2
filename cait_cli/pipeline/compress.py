"""`cait compress`: plan, calibrate CDCP, slim, fine-tune, measure, export.

    result = compress(CompressConfig(model="deit_small", target_speedup=1.9,
                                     data="/data/imagenet", out=Path("deit_small.cait")))
"""
from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import CaitError, Interrupted
from ..method.atme import MergeStep
from ..method.slim import slim
from ..method.variants import compressed_variant
from ..models.checkpoint import save_checkpoint
from ..models.loading import LoadedModel, load_model
from ..models.spec import CaitSpec
from .calibrate import apply_budget, gated_student
from .landing import fit_to_target
from .latency import calibrate_latency
from .measure import resolve_device
from .plan import Plan, PlanConfig, ScoreFn, describe_plan, make_plan
from .progress import Progress, Silent
from .report import build_report, measure_models, report_json
from .state import RunDir
from .train import LogitsOnly, StepBatches, TrainConfig, distill_loss, make_optimizer, train_step
from .data import collate_skipping, open_data, resolve_data_config


@dataclass
class CompressConfig:
    model: str
    target_speedup: float
    out: Path
    data: Optional[str] = None
    val_data: Optional[str] = None
    calib_steps: int = 300
    finetune_steps: int = 1000
    batch_size: int = 64
    bench_batch_size: Optional[int] = None  # throughput batch: 64 on CPU, 256 on GPU
    lr: float = 1e-4
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    weights: str = "pretrained"
    plan_only: bool = False
    checkpoint_every: int = 50
    max_val_images: Optional[int] = 5000
    tolerance: float = 0.03  # a measured speedup this far below the target still counts as reached
    replan: bool = True  # measure the slimmed model and re-plan if it misses the target
    latency_cache: Optional[Path] = None
    method: str = "cait"  # "atme" or "cdcp": one part alone, for ablations
    channel_multiple: int = 8  # kept widths (per head, MLP hidden) are multiples of this; 1: any width

    def plan_config(self, target: float, **kwargs) -> PlanConfig:
        return PlanConfig.for_method(self.method, target, multiple=self.channel_multiple, **kwargs)


@dataclass
class Job:
    """Everything one compression run works with."""

    cfg: CompressConfig
    progress: Progress
    device: torch.device
    loaded: LoadedModel
    base: nn.Module  # the original model: teacher and speed reference
    batches: Optional[StepBatches]
    val: Any  # held-out batches or None
    bench_batch: int
    amp: bool
    table: Any  # LatencyTable
    run: RunDir
    state: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    score: Optional[ScoreFn] = None  # ranks candidate plans (first plan and re-plans); None: no data

    def train_config(self, steps: int, warmup_cap: int) -> TrainConfig:
        return TrainConfig(steps=steps, lr=self.cfg.lr, amp=self.amp, warmup_steps=min(warmup_cap, steps // 10))


@dataclass
class CompressResult:
    plan: Plan
    out: Optional[Path] = None
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return bool(self.report.get("reached", True))


def check_config(cfg: CompressConfig) -> None:
    """Refuse bad options before any work is done or anything is written."""
    if cfg.target_speedup < 1.0:
        raise CaitError(f"--target-speedup must be at least 1.0, got {cfg.target_speedup:g}")
    if cfg.calib_steps < 0 or cfg.finetune_steps < 0:
        raise CaitError("--calib-steps and --finetune-steps must be 0 or more")
    if cfg.batch_size < 1:
        raise CaitError("--batch-size must be at least 1")
    if cfg.channel_multiple < 1:
        raise CaitError(f"--channel-multiple must be at least 1, got {cfg.channel_multiple}")
    cfg.plan_config(cfg.target_speedup)  # refuses an unknown --method
    if cfg.plan_only:
        return
    if cfg.out.exists() and not (cfg.overwrite or cfg.resume):
        raise CaitError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    if cfg.resume and not RunDir.beside(cfg.out).exists():
        raise CaitError(f"nothing to resume: no interrupted run for {cfg.out}")
    if cfg.data is None and (cfg.calib_steps or cfg.finetune_steps):
        raise CaitError("--data is needed for calibration and fine-tuning; "
                        "pass --calib-steps 0 --finetune-steps 0 for an untrained speed study")


def compress(cfg: CompressConfig, progress: Progress | None = None) -> CompressResult:
    """Run the whole job; CaitError (one line) for anything the user can fix."""
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    job = _start(cfg, progress or Silent())
    plan = _resumed_plan(job) or _plan(job)
    job.progress.message(describe_plan(plan))
    if cfg.plan_only:
        return CompressResult(plan)
    # calibration learns which channels to prune: with none to prune, its steps go to fine-tuning
    job.meta = {"config": _jsonable_config(cfg), "plan": plan.to_dict(),
                "calibrate": job.meta.get("calibrate", plan.keep < 1.0), "attempts": job.meta.get("attempts", [])}

    student = _calibrated_student(job, plan)
    plan = fit_to_target(job, student, plan)
    job.meta["plan"] = plan.to_dict()
    gated = {"gated": student.state_dict(), "keep": plan.keep}
    slim_model = _finetune(job, slim(copy.deepcopy(student)), gated)
    return _finish(job, plan, slim_model)


def _start(cfg: CompressConfig, progress: Progress) -> Job:
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model, cfg.weights)
    if loaded.is_compressed:
        raise CaitError(f"{cfg.model} is already compressed; compress its original model instead")
    base = loaded.model.to(device).eval()
    bundle = None
    if cfg.data:
        bundle = open_data(cfg.data, resolve_data_config(base), val_source=cfg.val_data,
                           batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, max_val=cfg.max_val_images)
    batches = StepBatches(bundle.train, cfg.batch_size, cfg.seed, collate_skipping) if bundle else None
    bench_batch = cfg.bench_batch_size or (256 if device.type == "cuda" else 64)
    progress.message(f"timing blocks on {device} (batch {bench_batch}) to calibrate the planner")
    table = calibrate_latency(base, device, bench_batch, cache_dir=cfg.latency_cache, multiple=cfg.channel_multiple)
    run = RunDir.beside(cfg.out)
    state, meta = run.load() if cfg.resume else ({}, {})
    scored = batches is not None and cfg.weights == "pretrained"
    score = _kl_score(base, batches, device, cfg.channel_multiple) if scored else None
    return Job(cfg, progress, device, loaded, base, batches, bundle.val if bundle else None, bench_batch,
               cfg.amp and device.type == "cuda", table, run, state, meta, score)


def _resumed_plan(job: Job) -> Optional[Plan]:
    if not job.meta:
        return None
    _check_resumable(job.meta, job.cfg)
    return plan_from_dict(job.meta["plan"])


def _plan(job: Job) -> Plan:
    return make_plan(job.base, job.table, job.cfg.plan_config(job.cfg.target_speedup), job.score)


def _finish(job: Job, plan: Plan, slim_model: nn.Module) -> CompressResult:
    """Measure against the original, then write the checkpoint and report.json atomically."""
    cfg = job.cfg
    job.progress.message("measuring the compressed model against the original")
    measured = measure_models(job.base, slim_model, job.val, job.device, job.bench_batch, job.amp)
    report = build_report(cfg.target_speedup, plan, measured, tolerance=cfg.tolerance)
    report["skipped_images"] += job.batches.skipped if job.batches else 0
    report["attempts"] = job.meta.get("attempts", [])
    spec = CaitSpec.of(slim_model, job.loaded.architecture, job.loaded.model_args)
    source = {"base_model": _base_model_id(job.loaded), "target_speedup": cfg.target_speedup,
              "measured_speedup": report["measured_speedup"], "plan": plan.to_dict()}
    save_checkpoint(slim_model.cpu().eval(), cfg.out, spec, source,
                    extra_files={"report.json": report_json(report)}, overwrite=cfg.overwrite or cfg.resume)
    job.run.remove()
    return CompressResult(plan, cfg.out, report)


def plan_from_dict(data: Dict[str, Any]) -> Plan:
    return Plan([MergeStep(b, a) for b, a in data["schedule"]], data["keep"], data["predicted_speedup"],
                [tuple(t) for t in data.get("tokens", [])], data.get("score"))


def _jsonable_config(cfg: CompressConfig) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


_RESUME_KEYS = ("model", "target_speedup", "data", "calib_steps", "finetune_steps", "batch_size", "lr", "seed",
                "weights", "method", "channel_multiple")


def _check_resumable(meta: Dict[str, Any], cfg: CompressConfig) -> None:
    saved, now = meta.get("config", {}), _jsonable_config(cfg)
    changed = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
    if changed:
        raise CaitError(f"cannot resume: {', '.join('--' + k.replace('_', '-') for k in changed)} "
                        "differ from the interrupted run")


def _base_model_id(loaded: LoadedModel) -> str:
    hub_id = getattr(loaded.model, "pretrained_cfg", {}).get("hf_hub_id")
    return hub_id or loaded.source


def _kl_score(base: nn.Module, batches: StepBatches, device: torch.device, multiple: int) -> ScoreFn:
    """Score of a plan: KL of its untrained compressed model from the original on one batch.

    The batch and the original's logits are computed at the first call, then reused.
    """
    @functools.cache
    def reference() -> Tuple[torch.Tensor, torch.Tensor]:
        images = batches.batch(0)[0].to(device)
        with torch.inference_mode():
            return images, base(images)

    def score(schedule, keep: float) -> float:
        images, teacher = reference()
        unlabelled = torch.full((images.shape[0],), -1, dtype=torch.long, device=device)
        variant = compressed_variant(base, schedule, keep, multiple)
        with torch.inference_mode():
            return float(distill_loss(variant(images), teacher, unlabelled, 0.0))

    return score


def _train(job: Job, student: nn.Module, tcfg: TrainConfig, phase: str, before_step=None,
           extra_state: Optional[Dict[str, Any]] = None) -> None:
    """Train `student` for tcfg.steps, resuming from the run's state if it is of this phase."""
    optimizer = make_optimizer(student, tcfg)
    start = 0
    if job.state.get("phase") == phase:
        student.load_state_dict(job.state["student"])
        optimizer.load_state_dict(job.state["optimizer"])
        start = job.state["step"]
    wrapped = LogitsOnly(student).train()

    def checkpoint(step: int) -> None:
        job.run.save({"phase": phase, "step": step, "student": student.state_dict(),
                      "optimizer": optimizer.state_dict(), **(extra_state or {})},
                     {**job.meta, "phase": phase, "step": step})

    job.progress.start(phase, tcfg.steps, start)
    done = start  # steps whose update is in the weights
    try:
        for step, (images, labels) in job.batches.iterate(start, tcfg.steps):
            if before_step is not None:
                before_step(step)
            loss = train_step(wrapped, job.base, images.to(job.device), labels.to(job.device), optimizer, tcfg, step)
            done = step + 1
            if done % job.cfg.checkpoint_every == 0 and done < tcfg.steps:
                checkpoint(done)
            job.progress.advance(done, loss=loss)
    except KeyboardInterrupt:
        checkpoint(done)
        job.progress.stop()
        raise Interrupted(f"interrupted during {phase} after step {done}/{tcfg.steps}; the checkpoint is in "
                          f"{job.run.path}; continue with the same command plus --resume") from None
    job.progress.stop()
    checkpoint(tcfg.steps)
    student.eval()


def _calibrated_student(job: Job, plan: Plan) -> nn.Module:
    """The gated, merging student with its CDCP scores learned (or restored)."""
    student = gated_student(job.base, plan.schedule, job.cfg.channel_multiple).to(job.device)
    if job.state.get("phase") == "finetune":  # calibration finished before the interruption
        student.load_state_dict(job.state["gated"])
        return student
    if job.cfg.calib_steps == 0 or job.batches is None or not job.meta["calibrate"]:
        return student  # weight-norm scores decide
    steps = job.cfg.calib_steps
    _train(job, student, job.train_config(steps, 20), "calibrate",
           before_step=lambda step: apply_budget(student, step, steps, plan.keep))
    return student


def _finetune(job: Job, slim_model: nn.Module, gated: Dict[str, Any]) -> nn.Module:
    steps = job.cfg.finetune_steps + (0 if job.meta["calibrate"] else job.cfg.calib_steps)
    if steps == 0 or job.batches is None:
        return slim_model
    if not job.meta["calibrate"] and job.cfg.calib_steps:
        job.progress.message(f"the plan prunes no channels: fine-tuning takes calibration's {job.cfg.calib_steps} "
                             f"steps too ({steps} in all)")
    _train(job, slim_model, job.train_config(steps, 50), "finetune", extra_state=gated)
    return slim_model
