"""The training step under torch.compile, with its compile time kept apart and an eager fallback.

The student (forward, and through AOTAutograd its backward) and the teacher's forward are
compiled; the loss, clipping and the optimizer stay eager (the loss indexes the labelled
images, a data-dependent shape). Shapes are static within a phase: the merge schedule is
fixed, the batch is fixed. CDCP's gates change how many channels they keep (`ChannelGate.keep`,
a Python int on the module) as the budget anneals: with `allow_unspec_int_on_nn_module` the
first change recompiles once with the count symbolic, later changes reuse that graph. Any
further recompiles are bounded by RECOMPILE_LIMIT (past it dynamo runs that code eagerly).

If compiling fails, one line says so and the phase runs eagerly from that step on.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from torch._dynamo.utils import counters

from ...method.atme import Axis
from .train import LogitsOnly, TrainConfig, train_step

RECOMPILE_LIMIT = 8  # graphs per compiled function: a phase needs 1-2; past this dynamo runs eagerly


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process (grows on every compile and recompile)."""
    return int(counters["stats"]["unique_graphs"])


@contextmanager
def compile_settings() -> Iterator[None]:
    """Gate counts symbolic after their first change; recompiles bounded."""
    with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True, recompile_limit=RECOMPILE_LIMIT):
        yield


@dataclass
class StepTimes:
    """Wall time of a phase's steps, the steps that compiled apart (their time is compile time)."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    compile_steps: int = 0
    compile_seconds: float = 0.0
    compiled: bool = False
    fallback: Optional[str] = None  # why the step runs eagerly, when compiling failed

    def add(self, images: int, seconds: float, compiled_now: bool) -> None:
        if compiled_now:
            self.compile_steps += 1
            self.compile_seconds += seconds
        else:
            self.steps += 1
            self.images += images
            self.seconds += seconds

    def to_dict(self) -> dict:
        rate = self.images / self.seconds if self.seconds else None
        return {"compiled": self.compiled, "compile_seconds": round(self.compile_seconds, 2),
                "compile_steps": self.compile_steps, "timed_steps": self.steps,
                "images_per_second": round(rate, 1) if rate else None, "fallback": self.fallback}


@dataclass
class Step:
    """One training step of a phase: compiled when asked, eager otherwise or after a failure."""

    student: nn.Module  # what the loop trains: LogitsOnly(student), maybe DistributedDataParallel
    teacher: nn.Module  # what it learns from: the original model, or --teacher's
    compile: bool = False
    warn: Callable[[str], None] = print
    backend: str = "inductor"
    times: StepTimes = field(default_factory=StepTimes)
    tokens_on: Optional[Sequence[Axis]] = None  # the student's merge axes, for token distillation; None: off

    def __post_init__(self) -> None:
        self.teacher_outputs = LogitsOnly(self.teacher, self.tokens_on).eval()
        self.times.compiled = self.compile
        if self.compile:
            self._student = torch.compile(self.student, backend=self.backend)
            self._teacher = torch.compile(self.teacher_outputs, backend=self.backend)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 cfg: TrainConfig, step: int) -> float:
        graphs, start = compiled_graphs(), time.perf_counter()
        loss = self._run(images, labels, optimizer, cfg, step)  # float(): the step has finished on the device
        self.times.add(len(images), time.perf_counter() - start, compiled_graphs() != graphs)
        return loss

    def _run(self, images, labels, optimizer, cfg, step) -> float:
        if not self.times.compiled:
            return train_step(self.student, self.teacher_outputs, images, labels, optimizer, cfg, step)
        try:
            with compile_settings():
                return train_step(self._student, self._teacher, images, labels, optimizer, cfg, step)
        except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as err:
            self._fall_back(err)
        return train_step(self.student, self.teacher_outputs, images, labels, optimizer, cfg, step)

    def _fall_back(self, err: BaseException) -> None:
        cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # the backend's own error
        lines = str(cause).strip().splitlines()
        self.times.compiled = False
        self.times.fallback = f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]
        self.warn(f"torch.compile failed on this model ({self.times.fallback}); training runs eagerly")
