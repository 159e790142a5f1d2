"""The run directory of `cait compress`: plan, training state, resumable.

It lives beside --out as `.NAME.cait-run/` and holds plan.json and state.pt
(phase, step, student, optimizer). It is written atomically after each
checkpoint interval and removed once the final checkpoint is in place. Under
torchrun only rank 0 writes it (`writes=False` elsewhere).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import CaitError
from ..method.atme import MergeStep
from .planning.plan import Plan


@dataclass
class RunDir:
    path: Path
    writes: bool = True  # False on the ranks that train alongside rank 0 but never write

    @classmethod
    def beside(cls, out: Path, writes: bool = True) -> "RunDir":
        return cls(out.parent / f".{out.name}.cait-run", writes)

    def exists(self) -> bool:
        return (self.path / "state.pt").is_file()

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CaitError(f"cannot write to {self.path.parent}: {err.strerror or err}") from None

    def save(self, state: Dict[str, Any], meta: Dict[str, Any]) -> None:
        """Write state.pt and run.json atomically (the previous pair stays valid until then)."""
        if not self.writes:
            return
        self.create()
        try:
            tmp = self.path / "state.pt.tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.path / "state.pt")
            tmp = self.path / "run.json.tmp"
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, self.path / "run.json")
        except OSError as err:
            raise CaitError(f"cannot save a training checkpoint in {self.path}: {err.strerror or err}") from None

    def load(self) -> tuple[Dict[str, Any], Dict[str, Any]]:
        try:
            state = torch.load(self.path / "state.pt", map_location="cpu", weights_only=False)
            meta = json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError, RuntimeError) as err:
            raise CaitError(f"cannot resume from {self.path}: {err}") from None
        return state, meta

    def remove(self) -> None:
        if self.writes:
            shutil.rmtree(self.path, ignore_errors=True)


def plan_from_dict(data: Dict[str, Any]) -> Plan:
    """The Plan saved in run.json (or sent from rank 0)."""
    return Plan([MergeStep(b, a) for b, a in data["schedule"]], data["keep"], data["predicted_speedup"],
                [tuple(t) for t in data.get("tokens", [])], data.get("score"))


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: Optional[Dict[str, Any]]) -> None:
    if state:
        torch.set_rng_state(state["torch"])
