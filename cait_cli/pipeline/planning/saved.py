"""A plan reused from an earlier run (`cait compress --plan PATH`).

The same merge schedule and channel budget, re-run on new data, with another seed or on
another machine: the plan is read from what the earlier run left, checked against the model
at hand and predicted anew on this device's latency table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from ...errors import CaitError
from ...method.base import check_schedule, tokens_per_block
from .latency import LatencyTable
from .plan import Plan, PlanConfig, SpeedModel

# Where a plan can be read from, in a folder: a checkpoint's report.json, then its config.json
# (the plan under "cait"), or an interrupted run's run.json (.NAME.cait-run/).
PLAN_FILES = ("report.json", "config.json", "run.json")


def read_plan(path: Path) -> Plan:
    """The plan in a report.json, config.json or run.json, or in a folder holding one."""
    file = _plan_file(path)
    try:
        data = json.loads(file.read_text())
        return Plan.from_dict(_plan_of(data))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CaitError(f"--plan {path}: no plan could be read from {file} ({type(err).__name__}: {err})") from err


def _plan_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = next((path / name for name in PLAN_FILES if (path / name).is_file()), None)
        if found is not None:
            return found
        raise CaitError(f"--plan {path}: the folder holds none of {', '.join(PLAN_FILES)}")
    raise CaitError(f"--plan {path}: no such file or folder")


def _plan_of(data: Dict[str, Any]) -> Dict[str, Any]:
    """The plan's dict in a report or run record ("plan"), a checkpoint's config.json ("cait": {"plan"}),
    or a plan's own dict ("schedule", "keep")."""
    plan: Optional[Dict[str, Any]] = data.get("plan") or (data.get("cait") or {}).get("plan")
    if plan is None and "schedule" in data:
        plan = data
    if not plan:
        raise KeyError("plan")
    return {"predicted_speedup": 0.0, **plan}


def fitted_plan(plan: Plan, model: nn.Module, table: LatencyTable, cfg: PlanConfig) -> Plan:
    """`plan` checked against `model` (its blocks, its patch grid) and the method (cfg.merge, cfg.prune),
    with its token counts and predicted speedup worked out for this model on this device."""
    speed = SpeedModel(model, table, cfg.multiple)
    check_schedule(plan.schedule, speed.depth, speed.grid)
    if not 0.0 < plan.keep <= 1.0:
        raise CaitError(f"--plan: its channel budget (keep {plan.keep:g}) must be above 0 and at most 1")
    if plan.keep < 1.0 and not cfg.prune:
        raise CaitError("--plan prunes channels; --method atme does not prune")
    if plan.schedule and not cfg.merge:
        raise CaitError("--plan merges tokens; --method cdcp does not merge")
    tokens = tokens_per_block(speed.grid, speed.prefix, speed.depth, plan.schedule)
    return Plan(list(plan.schedule), plan.keep, speed.speedup(plan.schedule, plan.keep), tokens, plan.score)
