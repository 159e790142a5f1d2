"""Runs of one plan: `cait compress` repeated with one setting changed, for the benchmarks that
compare what training gives (accuracy, features), not speed (importance_signal, compile_accuracy,
headless). Re-planning is off and the latency table shared, so every run slims the same plan."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import cait_cli
from cait_cli.errors import CaitError

# the harness options of the short run these benchmarks repeat (the quick start's, by default)
RUN_OPTIONS = ("data", "target", "calib_steps", "finetune_steps", "latency_cache", "out")


def compress_run(model: str, out: Path, latency_cache: Optional[Path], **options: Any) -> Dict[str, Any]:
    """`cait_cli.compress` without re-planning (workers 0, --out replaced); its report plus wall_s."""
    start = time.perf_counter()
    result = cait_cli.compress(model, out=out, workers=0, replan=False, overwrite=True,
                               latency_cache=latency_cache, **options)
    return dict(result.report, wall_s=time.perf_counter() - start)


def require_one_plan(reports: Iterable[Dict[str, Any]]) -> None:
    """CaitError unless every report slimmed the same plan (merges and kept share)."""
    plans = {(str(r["plan"]["schedule"]), round(r["plan"]["keep"], 6)) for r in reports}
    if len(plans) != 1:
        raise CaitError("the runs slimmed different plans; the comparison needs one (the same latency cache)")
