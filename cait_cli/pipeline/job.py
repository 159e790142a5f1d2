"""What one compression run works with: its options (`CompressConfig`), what it prepared before looking at
its target (`Prepared`: model, data, latency table) and the run itself (`Job`).

Kept apart from the orchestrator (compress.py) so the phases it calls (landing,
training, calibration) depend on this, not on the orchestrator.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from ..models.loading import LoadedModel
from .data.batches import StepBatches, to_device
from .data.sources import Batches
from .distributed import Cluster
from .measuring.measure import Reference
from .measuring.runtimes import Forwards
from .planning.latency import LatencyTable
from .planning.plan import PlanConfig, ScoreFn
from .progress import Progress
from .state import RunDir, RunState
from .training.train import TrainConfig


@dataclass
class CompressConfig:
    model: str
    target_speedup: float
    out: Path
    data: Optional[str] = None
    val_data: Optional[str] = None
    calib_steps: int = 300
    finetune_steps: int = 1000
    batch_size: Optional[int] = None  # per process; None: 256 on CUDA, 64 on the CPU (DEFAULT_BATCH)
    bench_batch_size: Optional[int] = None  # throughput batch: 64 on CPU, 256 on GPU
    lr: Optional[float] = None  # None: LR_BASE for a global batch of LR_BASE_BATCH, scaled linearly (lr_for)
    score_lr: float = TrainConfig.score_lr  # CDCP's channel scores (calibration): they move faster than the weights
    merge_lr: Optional[float] = None  # ATME's merge weights (alpha); None: the weights' lr
    compile: Optional[bool] = None  # the training step under torch.compile; None: on CUDA yes, on the CPU no
    decode: str = "auto"  # training JPEGs decoded "cpu" (loader workers) or "gpu"; auto: gpu on CUDA for JPEGs
    device: str = "auto"
    runtime: str = "auto"  # what serves the model, and so what every timing runs under (runtimes.RUNTIMES)
    amp: bool = True
    workers: Optional[int] = None  # data processes per training process; None: CPU cores / processes, at most 8
    augment: bool = False  # light augmentation of training images (random resized crop, flip)
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    weights: str = "pretrained"
    plan_only: bool = False
    plan: Optional[str] = None  # reuse an earlier run's plan: its report.json, checkpoint or run folder (no re-planning)
    checkpoint_every: int = 50
    max_val_images: Optional[int] = 5000
    tolerance: float = 0.03  # a measured speedup this far below the target still counts as reached
    replan: bool = True  # measure the slimmed model and re-plan if it misses the target
    latency_cache: Optional[Path] = None
    method: str = "cait"  # "atme" or "cdcp": one part alone, for ablations
    channel_multiple: int = 8  # kept widths (per head, MLP hidden) are multiples of this; 1: any width
    max_keep: float = 1.0  # CDCP keeps at most this fraction of the gated channel MACs (1.0: planner decides)
    min_keep: float = 0.25  # and at least this fraction (prunes at most 1 - min_keep); 0.25 is the planner's floor
    importance: Optional[str] = None  # ATME's token importance: "cls" or "received"; None: "cls" where there is one
    teacher: Optional[str] = None  # what the student learns from: any model cait loads, of its classes; None: the original
    distill: str = "soft"  # how the teacher's logits teach: soft (KL), hard (CE to its top-1), both (their mean)
    token_distill: float = 0.0  # weight of the teacher's tokens averaged onto the merged grid (1 - cosine); 0: off
    temperature: float = 1.0  # of soft distillation: logits / T, KL x T^2
    schedule: str = "phases"  # each phase its own batches from the first, warm-up and cosine; "continuous": one of each

    def plan_config(self, target: float, **kwargs) -> PlanConfig:
        return PlanConfig.for_method(self.method, target, multiple=self.channel_multiple, max_keep=self.max_keep,
                                     min_keep=self.min_keep, **kwargs)


DEFAULT_BATCH = {"cuda": 256, "cpu": 64}  # per process; on an H200 256 about doubled images/s over 128
LR_BASE, LR_BASE_BATCH = 1e-4, 64  # the weights' learning rate at a global batch of 64


def lr_for(global_batch: int) -> float:
    """timm's linear rule (lr = lr_base * batch / lr_base_size): LR_BASE scaled by global_batch / 64."""
    return LR_BASE * global_batch / LR_BASE_BATCH


def resolved(cfg: CompressConfig, device: torch.device, world: int) -> CompressConfig:
    """cfg with its automatic training options made concrete for `device` and `world` processes.

    A batch size or lr the user gave is used as given; an lr left out follows the global batch.
    """
    batch = cfg.batch_size or DEFAULT_BATCH.get(device.type, DEFAULT_BATCH["cpu"])
    lr = cfg.lr if cfg.lr is not None else lr_for(batch * world)
    compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    replan = cfg.replan and cfg.plan is None  # a plan given is the plan slimmed, whatever it measures
    return replace(cfg, batch_size=batch, lr=lr, compile=compile, replan=replan)


def no_reference() -> None:
    return None


# What Prepared.seconds times, by key
LOADING, LATENCY_TABLE, REFERENCE = "model and data", "latency table", "the original on the held-out images"


@dataclass(kw_only=True)
class Prepared:
    """What a compression works with before it looks at its target (compress.prepare makes it): the
    model loaded, the data opened, the latency table timed, the planner's judge, the forwards the
    original is timed with. A sweep prepares once and compresses every target with it."""

    device: torch.device
    cluster: Cluster  # the torchrun processes; one without torchrun
    loaded: LoadedModel
    base: nn.Module  # the original model: the speed reference
    teacher: nn.Module  # what the student learns from: the original (base), or --teacher's model
    table: LatencyTable  # block latencies on this device, under the runtime: the planner's speed model
    forwards: Forwards  # every timed forward, under the job's runtime; the original's built once
    bench_batch: int  # the batch every speed measurement runs
    amp: bool  # bf16 autocast, for training and every speed measurement (CUDA only)
    batches: Optional[StepBatches] = None  # training batches; None without data
    val: Optional[Batches] = None  # held-out batches; None without them
    labels_note: Optional[str] = None  # why the data's labels are ignored, when they are
    score: Optional[ScoreFn] = None  # ranks candidate plans (first plan and re-plans); None: no data
    # the original measured on `val` (accuracy, and its outputs that agreement is counted against):
    # measured at the first call, then kept; None without held-out images
    reference: Callable[[], Optional[Reference]] = no_reference
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time of each part of the preparation

    def parts(self) -> Dict[str, Any]:
        """The fields, for a Job made of them (shared, not copied: a sweep's jobs share one reference)."""
        return {f.name: getattr(self, f.name) for f in fields(Prepared)}


@dataclass(kw_only=True)
class Job(Prepared):
    """What one compression run works with once started: what was prepared, its options, where it saves."""

    cfg: CompressConfig  # resolved: batch size, lr and compile concrete
    progress: Progress
    run: RunDir
    resumed: Optional[RunState] = None  # the training state an interrupted run saved (--resume)
    step_times: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # phase: StepTimes.to_dict(), for the report

    @property
    def decode(self) -> str:
        """Where training images are decoded: "cpu" (loader workers) or "gpu" (device_decode)."""
        return "gpu" if self.batches is not None and self.batches.finish is not to_device else "cpu"

    def train_config(self, steps: int, warmup_cap: int, before: int = 0,
                     run_steps: Optional[int] = None) -> TrainConfig:
        """A phase of `steps`; `before` and `run_steps` (the steps before it and in the whole run): its
        batches and learning rate follow on from the phases before (--schedule continuous)."""
        warmup = min(warmup_cap, (run_steps or steps) // 10)
        return TrainConfig(steps=steps, lr=self.cfg.lr, score_lr=self.cfg.score_lr, merge_lr=self.cfg.merge_lr,
                           amp=self.amp, warmup_steps=warmup, distill=self.cfg.distill,
                           token_weight=self.cfg.token_distill, temperature=self.cfg.temperature, before=before,
                           schedule_steps=run_steps)
