"""The phases around the landing: CDCP calibration, landing on every rank, fine-tuning."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

import torch.nn as nn

from ..method.cdcp import gates_of, set_budget
from ..method.model import patch_vit
from .distributed import copy_from_main, on_main
from .planning.landing import fit_to_target
from .planning.plan import Plan
from .state import plan_from_dict
from .training.calibrate import apply_budget, gated_student
from .training.loop import run_phase

if TYPE_CHECKING:
    from .job import Job


def calibrated_student(job: "Job", plan: Plan) -> nn.Module:
    """The gated, merging student with its CDCP scores learned (or restored)."""
    student = gated_student(job.base, plan.schedule, job.cfg.channel_multiple, job.cfg.importance).to(job.device)
    if job.state.get("phase") == "finetune":  # calibration finished before the interruption
        student.load_state_dict(job.state["gated"])
        return student
    if job.cfg.calib_steps == 0 or job.batches is None or not job.meta["calibrate"]:
        return student  # weight-norm scores decide
    steps = job.cfg.calib_steps
    scores = [gate.scores for gate in gates_of(student).values()]

    def before_step(step: int) -> None:
        copy_from_main(job.cluster, scores)  # the same top-k masks on every rank, whatever the float noise
        apply_budget(student, step, steps, plan.keep)

    run_phase(job, student, job.train_config(steps, 20), "calibrate", before_step=before_step)
    return student


def landed(job: "Job", student: nn.Module, plan: Plan) -> Plan:
    """fit_to_target on rank 0 (it measures); the other ranks take its plan and budget."""
    landed_plan = plan_from_dict(on_main(job.cluster, lambda: fit_to_target(job, student, plan).to_dict()))
    if not job.cluster.is_main and landed_plan.schedule != plan.schedule:
        patch_vit(student, landed_plan.schedule)
    copy_from_main(job.cluster, [gate.scores for gate in gates_of(student).values()])
    set_budget(student, landed_plan.keep)  # (rank 0: again, the same)
    return landed_plan


def finetune(job: "Job", slim_model: nn.Module, gated: Dict[str, Any]) -> nn.Module:
    steps = job.cfg.finetune_steps + (0 if job.meta["calibrate"] else job.cfg.calib_steps)
    if steps == 0 or job.batches is None:
        return slim_model
    if not job.meta["calibrate"] and job.cfg.calib_steps:
        job.progress.message(f"the plan prunes no channels: fine-tuning takes calibration's {job.cfg.calib_steps} "
                             f"steps too ({steps} in all)")
    run_phase(job, slim_model, job.train_config(steps, 50), "finetune", extra_state=gated)
    return slim_model
