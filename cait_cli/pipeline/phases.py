"""The phases around the landing: CDCP calibration, landing on every rank, fine-tuning.

Each reads and updates the run's record (RunRecord: plan, attempts) and saves its
checkpoints through the run directory, with the record beside them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch.nn as nn

from ..errors import Interrupted
from ..method.cdcp import gates_of, set_budget
from ..method.model import patch_vit
from .distributed import copy_from_main, on_main
from .planning.landing import apply_plan, fit_to_target
from .state import RunRecord, RunState, StateDict
from .training.calibrate import apply_budget, gated_student
from .training.loop import run_phase
from .training.train import TrainConfig

if TYPE_CHECKING:
    from .job import Job


def calibrated_student(job: "Job", record: RunRecord) -> nn.Module:
    """The gated, merging student with its CDCP scores learned (or restored)."""
    plan = record.plan
    student = gated_student(job.base, plan.schedule, job.cfg.channel_multiple, job.cfg.importance).to(job.device)
    if job.resumed is not None and job.resumed.gated is not None:  # calibration finished before the interruption
        student.load_state_dict(job.resumed.gated)
        return student
    if job.cfg.calib_steps == 0 or job.batches is None or not record.calibrate:
        return student  # weight-norm scores decide
    steps = job.cfg.calib_steps
    scores = [gate.scores for gate in gates_of(student).values()]

    def before_step(step: int) -> None:
        copy_from_main(job.cluster, scores)  # the same top-k masks on every rank, whatever the float noise
        apply_budget(student, step, steps, plan.keep)

    _train(job, record, student, _phase_config(job, record, steps, "calibrate"), "calibrate", before_step=before_step)
    return student


def landed(job: "Job", record: RunRecord, student: nn.Module) -> None:
    """Land record.plan on the target: fit_to_target on rank 0 (it measures), the other ranks take
    its plan and budget; record.plan becomes the landed plan and record.attempts its measurements.
    Resumed in fine-tuning, landing's budget was saved: the student takes it again."""
    if job.resumed is not None and job.resumed.keep is not None:
        record.plan.keep = job.resumed.keep
        apply_plan(student, record.plan)
        return
    plan, attempts = on_main(job.cluster, lambda: fit_to_target(job, student, record.plan))
    if not job.cluster.is_main and plan.schedule != record.plan.schedule:
        patch_vit(student, plan.schedule)
    copy_from_main(job.cluster, [gate.scores for gate in gates_of(student).values()])
    set_budget(student, plan.keep)  # (rank 0: again, the same)
    record.plan, record.attempts = plan, attempts


def finetune(job: "Job", record: RunRecord, slim_model: nn.Module, gated: StateDict) -> nn.Module:
    """Fine-tune the slimmed student; its checkpoints keep the gated student it came from."""
    steps = job.cfg.finetune_steps + (0 if record.calibrate else job.cfg.calib_steps)
    if steps == 0 or job.batches is None:
        return slim_model
    if not record.calibrate and job.cfg.calib_steps:
        job.progress.message(f"the plan prunes no channels: fine-tuning takes calibration's {job.cfg.calib_steps} "
                             f"steps too ({steps} in all)")
    _train(job, record, slim_model, _phase_config(job, record, steps, "finetune"), "finetune", gated=gated)
    return slim_model


WARMUP_CAP = {"calibrate": 20, "finetune": 50}  # warm-up steps at most (a tenth of the steps below that)
SCHEDULES = ("phases", "continuous")


def _phase_config(job: "Job", record: RunRecord, steps: int, phase: str) -> TrainConfig:
    """Each phase its own batches from the first, warm-up and cosine ("phases"); or, "continuous", one
    warm-up and cosine over calibration and fine-tuning, fine-tuning's batches after calibration's (none
    replayed). Without calibration fine-tuning is the whole run either way."""
    cfg = job.cfg
    if cfg.schedule != "continuous" or not record.calibrate or cfg.calib_steps == 0:
        return job.train_config(steps, WARMUP_CAP[phase])
    before = 0 if phase == "calibrate" else cfg.calib_steps
    return job.train_config(steps, WARMUP_CAP["calibrate"], before, cfg.calib_steps + cfg.finetune_steps)


def _train(job: "Job", record: RunRecord, student: nn.Module, tcfg: TrainConfig, phase: str,
           before_step: Optional[Callable[[int], Any]] = None, gated: Optional[StateDict] = None) -> None:
    """run_phase with the run's checkpoints (fine-tuning's with the gated student and its budget)."""
    def checkpoint(state: RunState) -> None:
        job.run.save(replace(state, gated=gated, keep=None if gated is None else record.plan.keep), record)

    try:
        times = run_phase(student, job.teacher, job.batches, tcfg, job.device, phase=phase, cluster=job.cluster,
                          compile=bool(job.cfg.compile), checkpoint=checkpoint,
                          checkpoint_every=job.cfg.checkpoint_every, progress=job.progress,
                          before_step=before_step, resume=job.resumed)
    except Interrupted as stop:
        raise Interrupted(f"{stop}; the checkpoint is in {job.run.path}; continue with the same command plus "
                          "--resume", stop.exit_code) from None
    job.step_times[phase] = times.to_dict()
