"""The run directory of `cait compress`: what an interrupted run needs to go on.

It lives beside --out as `.NAME.cait-run/` and holds two files, written together after
each checkpoint interval and removed once the final checkpoint is in place:

- state.pt, the training state (`RunState`): phase, step, student and optimizer, and once
  fine-tuning began the gated student and the budget landing chose;
- run.json, the run's record (`RunRecord`): its resolved options, process count, plan,
  landing's measurements, and the phase and step the state is at.

Under torchrun only rank 0 writes it (`writes=False` elsewhere).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from contextlib import suppress
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..atomic import reported_write
from ..errors import CaitError, first_line
from .planning.plan import Attempt, Plan

STATE_FILE, RECORD_FILE = "state.pt", "run.json"
StateDict = Dict[str, torch.Tensor]


@dataclass
class RunState:
    """Where training stood when it was saved (state.pt)."""

    phase: str  # "calibrate" or "finetune"
    step: int  # steps whose update is in `student` and `optimizer`
    student: StateDict
    optimizer: Dict[str, Any]
    gated: Optional[StateDict] = None  # fine-tuning: the calibrated gated student at the landed plan
    keep: Optional[float] = None  # fine-tuning: the CDCP budget landing chose for it

    def to_dict(self) -> Dict[str, Any]:
        """state.pt's dict (a field that is None is left out, as older runs wrote it)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunState":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class RunRecord:
    """What the run is (run.json): compared on --resume, and reported at the end."""

    config: Dict[str, Any]  # the resolved CompressConfig as JSON: what --resume must match
    processes: int  # torchrun processes (the global batch depends on them)
    plan: Plan  # the first plan; the landed one once landing has measured
    lr_rule: Optional[str]  # how the learning rate was chosen (for the report)
    calibrate: bool  # whether CDCP calibration runs: the first plan prunes (else its steps go to fine-tuning)
    attempts: List[Attempt] = field(default_factory=list)  # landing's measurements
    phase: Optional[str] = None  # where the saved RunState is
    step: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"config": self.config, "processes": self.processes, "plan": self.plan.to_dict(),
                "lr_rule": self.lr_rule, "calibrate": self.calibrate,
                "attempts": [a.to_dict() for a in self.attempts], "phase": self.phase, "step": self.step}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunRecord":
        return cls(data.get("config", {}), data.get("processes", 1), Plan.from_dict(data["plan"]),
                   data.get("lr_rule"), data["calibrate"], [Attempt.from_dict(a) for a in data.get("attempts", [])],
                   data.get("phase"), data.get("step"))


@dataclass
class RunDir:
    path: Path
    writes: bool = True  # False on the ranks that train alongside rank 0 but never write

    @classmethod
    def beside(cls, out: Path, writes: bool = True) -> "RunDir":
        return cls(out.parent / f".{out.name}.cait-run", writes)

    def exists(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CaitError(f"cannot write to {self.path.parent}: {err.strerror or err}") from err

    def save(self, state: RunState, record: RunRecord) -> None:
        """Write state.pt and run.json: both to temporary files, then renamed, so the previous pair
        stays whole until both are written. A failed write is one CaitError line (what, why, the
        space it needed) and leaves no temporary file."""
        if not self.writes:
            return
        self.create()
        text = json.dumps(replace(record, phase=state.phase, step=state.step).to_dict(), indent=2)
        state_path, record_path = self.path / STATE_FILE, self.path / RECORD_FILE
        temps = [path.with_name(path.name + ".tmp") for path in (state_path, record_path)]
        try:
            with reported_write(state_path, tensor_bytes(state.to_dict())):
                torch.save(state.to_dict(), temps[0])
            with reported_write(record_path, len(text.encode())):
                temps[1].write_text(text)
            os.replace(temps[0], state_path)
            os.replace(temps[1], record_path)
        except OSError as err:
            raise CaitError(f"cannot save a training checkpoint in {self.path}: {err.strerror or err}") from err
        finally:  # also when Ctrl-C lands mid-write
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            if not self.exists():  # a first save that failed leaves no empty folder
                with suppress(OSError):
                    self.path.rmdir()

    def load(self) -> Tuple[RunState, RunRecord]:
        """The state and record an interrupted run left; CaitError (one line) if they cannot be read."""
        try:
            state = torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)
            record = json.loads((self.path / RECORD_FILE).read_text())
            return RunState.from_dict(state), RunRecord.from_dict(record)
        except (OSError, ValueError, RuntimeError, TypeError, pickle.UnpicklingError) as err:
            raise CaitError(f"cannot resume from {self.path}: {first_line(err)}") from err
        except KeyError as err:
            raise CaitError(f"cannot resume from {self.path}: it holds no {err}") from err

    def remove(self) -> None:
        if self.writes:
            shutil.rmtree(self.path, ignore_errors=True)


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in `value` (nested dicts, lists and tuples): about what torch.save writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0
