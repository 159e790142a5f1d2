"""The resumable training loop that CDCP calibration and fine-tuning share.

Each rank trains its part of the global batch through DistributedDataParallel (a
cluster of one trains alone). The loop writes nothing itself: it hands its state to
`checkpoint` every `checkpoint_every` steps, at the end of the phase, and when the run
is stopped (Ctrl-C, or SIGTERM as a scheduler sends it), then raises Interrupted.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ...errors import Interrupted
from ..data.batches import StepBatches
from ..distributed import Cluster, data_parallel
from ..progress import Progress, Silent
from ..state import RunState
from .compiled import Step, StepTimes
from .distill import merge_axes
from .stopping import Terminated, exit_code, sigterm_raises
from .train import LogitsOnly, TrainConfig, make_optimizer

Checkpoint = Callable[[RunState], None]  # keeps the loop's state (the caller adds what it knows)


def run_phase(student: nn.Module, teacher: nn.Module, batches: StepBatches, tcfg: TrainConfig,
              device: torch.device, *, phase: str, cluster: Cluster = Cluster(), compile: bool = False,
              checkpoint: Optional[Checkpoint] = None, checkpoint_every: int = 50,
              progress: Optional[Progress] = None, before_step: Optional[Callable[[int], Any]] = None,
              resume: Optional[RunState] = None) -> StepTimes:
    """Distil `teacher` into `student` for tcfg.steps (from `resume`'s step if it is of this phase);
    with tcfg.token_weight > 0 the teacher's tokens too, averaged onto the student's merged grid.

    Returns the phase's step times. A stop (Ctrl-C, SIGTERM) saves the state through
    `checkpoint` and raises Interrupted; its exit_code tells the two apart (130, 143).
    """
    progress = progress or Silent()
    optimizer = make_optimizer(student, tcfg)
    start = 0
    if resume is not None and resume.phase == phase:
        student.load_state_dict(resume.student)
        optimizer.load_state_dict(resume.optimizer)
        start = resume.step
    tokens_on = merge_axes(student) if tcfg.token_weight > 0 else None  # token distillation on its merged grid
    wrapped = data_parallel(cluster, LogitsOnly(student, tokens_on).train(), device)
    train_step = Step(wrapped, teacher, compile=compile, warn=progress.message, tokens_on=tokens_on)

    def save(step: int) -> None:
        if checkpoint is not None:
            checkpoint(RunState(phase, step, student.state_dict(), optimizer.state_dict()))

    progress.start(phase, tcfg.steps, start)
    done = start  # steps whose update is in the weights
    try:
        with sigterm_raises():
            for batch, (images, labels) in batches.iterate(tcfg.before + start, tcfg.before + tcfg.steps, device):
                step = batch - tcfg.before  # the phase's step (batch: the run's, after the phases before)
                if before_step is not None:
                    before_step(step)
                loss = train_step(images, labels, optimizer, tcfg, step)
                done = step + 1
                if done % checkpoint_every == 0 and done < tcfg.steps:
                    save(done)
                progress.advance(done, loss=loss)
    except (KeyboardInterrupt, Terminated) as stop:
        try:
            save(done)  # (its step times are not kept: a resumed phase reports the steps it ran)
        finally:
            progress.stop()
        how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        raise Interrupted(f"{how} during {phase} after step {done}/{tcfg.steps}", exit_code(stop)) from None
    progress.stop()
    save(tcfg.steps)
    student.eval()
    return train_step.times
