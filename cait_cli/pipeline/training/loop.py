"""The resumable training loop that CDCP calibration and fine-tuning share.

Each rank trains its part of the global batch through DistributedDataParallel (a
cluster of one trains alone); rank 0 alone writes the run's checkpoints.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import torch.nn as nn

from ...errors import Interrupted
from ..distributed import data_parallel
from .compiled import Step
from .train import LogitsOnly, TrainConfig, make_optimizer

if TYPE_CHECKING:
    from ..job import Job


def run_phase(job: "Job", student: nn.Module, tcfg: TrainConfig, phase: str,
              before_step: Optional[Callable[[int], Any]] = None, extra_state: Optional[Dict[str, Any]] = None) -> None:
    """Train `student` for tcfg.steps, resuming from the run's state if it is of this phase."""
    optimizer = make_optimizer(student, tcfg)
    start = 0
    if job.state.get("phase") == phase:
        student.load_state_dict(job.state["student"])
        optimizer.load_state_dict(job.state["optimizer"])
        start = job.state["step"]
    wrapped = data_parallel(job.cluster, LogitsOnly(student).train(), job.device)
    train_step = Step(wrapped, job.base, compile=job.compile, warn=job.progress.message)

    def checkpoint(step: int) -> None:
        job.run.save({"phase": phase, "step": step, "student": student.state_dict(),
                      "optimizer": optimizer.state_dict(), **(extra_state or {})},
                     {**job.meta, "phase": phase, "step": step})

    job.progress.start(phase, tcfg.steps, start)
    done = start  # steps whose update is in the weights
    try:
        for step, (images, labels) in job.batches.iterate(start, tcfg.steps, job.device):
            if before_step is not None:
                before_step(step)
            loss = train_step(images, labels, optimizer, tcfg, step)
            done = step + 1
            if done % job.cfg.checkpoint_every == 0 and done < tcfg.steps:
                checkpoint(done)
            job.progress.advance(done, loss=loss)
    except KeyboardInterrupt:
        checkpoint(done)  # (its step times are not kept: a resumed phase reports the steps it ran)
        job.progress.stop()
        raise Interrupted(f"interrupted during {phase} after step {done}/{tcfg.steps}; the checkpoint is in "
                          f"{job.run.path}; continue with the same command plus --resume") from None
    job.progress.stop()
    job.step_times[phase] = train_step.times.to_dict()
    checkpoint(tcfg.steps)
    student.eval()
