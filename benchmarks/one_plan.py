"""Runs of one plan: `cait compress` repeated with one setting changed, for the benchmarks that
compare what training gives (accuracy, features), not speed (importance_signal, compile_accuracy,
headless). Re-planning is off and the latency table shared, so every run slims the same plan."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import cait_cli
from cait_cli.atomic import write_text_atomic
from cait_cli.errors import CaitError


def add_run_options(parser: argparse.ArgumentParser, model: Optional[str] = "examples/reference",
                    latency_cache_help: Optional[str] = None) -> None:
    """The options of the short run these benchmarks repeat (the quick start's, by default);
    --model only when `model` names a default (headless builds its own model)."""
    if model:
        parser.add_argument("--model", default=model)
    parser.add_argument("--data", default="examples/fashion_mnist")
    parser.add_argument("--target", type=float, default=1.9)
    parser.add_argument("--calib-steps", type=int, default=50)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--latency-cache", type=Path, help=latency_cache_help)
    parser.add_argument("--out", type=Path, help="markdown file (default: print only)")


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


def merges(plan: Dict[str, Any], sep: str = ",") -> str:
    """The blocks a report's plan merges after: "3,7", or "none"."""
    return sep.join(str(block) for block, _ in plan["schedule"]) or "none"


def publish(text: str, out: Optional[Path]) -> None:
    """Print a benchmark's markdown, and write it to `out` (atomically) when given."""
    print(text)
    if out:
        write_text_atomic(out, text)
