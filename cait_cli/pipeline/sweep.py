"""`cait sweep`: one compressed checkpoint per target speedup, to see what each costs in accuracy.

    report = sweep(SweepConfig(CompressConfig(model="deit_small", target_speedup=1.3, data="/data/imagenet",
                                              out=Path("deit_small.sweep")), speedups=[1.3, 1.6, 1.9]))

Every target is compressed by compress itself (plan, calibrate, land, fine-tune, measure, write) into
OUT/1.9x.cait, on what compress.prepare made once for all of them: the model and the data, the latency
table, the planner's judge (its scoring batch and every plan it scored), the original's timed forward
and its outputs on the held-out images. Before any of it is trained, targets beyond what the planner
can reach are refused in one line. sweep.json is rewritten after every point; with --resume the
points whose checkpoint is written are read back, and an interrupted one continues as compress
--resume does. A point compress refuses says so in its row, and the sweep goes on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..atomic import write_json_atomic
from ..errors import CaitError, Interrupted, first_line
from .compress import RESUME_KEYS, changed_options, check_config, compress, jsonable_config, prepare
from .distributed import Cluster, join, leave, on_main
from .job import LATENCY_TABLE, LOADING, REFERENCE, CompressConfig, Prepared, resolved
from .measuring.measure import resolve_device
from .planning.plan import beyond_reach, fastest
from .progress import Progress, Silent
from .reports.compress import CompressReport
from .reports.parts import Timing
from .reports.sweep import SharedWork, SweepPoint, SweepReport, on_front
from .state import RunDir

SWEEP_FILE, PLOT_FILE, REPORT_FILE = "sweep.json", "sweep.png", "report.json"
PER_POINT = ("target_speedup", "out", "resume", "overwrite", "plan", "plan_only")  # each point's, or no sweep's
SWEEP_KEYS = tuple(k for k in RESUME_KEYS if k not in PER_POINT)  # what --resume must find unchanged
Draw = Callable[[SweepReport, Path], Optional[str]]  # draws the plot at the path; returns why not (None: drawn)


@dataclass
class SweepConfig:
    template: CompressConfig  # every point's options; its out is the sweep's folder, its target each point's
    speedups: List[float]

    @property
    def out(self) -> Path:
        return self.template.out

    def checkpoint(self, target: float) -> Path:
        return self.out / f"{target:g}x.cait"

    def point(self, target: float) -> CompressConfig:
        """The compress options of `target`'s point: resumed when an interrupted run of it is there."""
        out = self.checkpoint(target)
        return replace(self.template, target_speedup=target, out=out,
                       resume=self.template.resume and RunDir.beside(out).exists())


def sweep(cfg: SweepConfig, progress: Optional[Progress] = None, draw: Optional[Draw] = None) -> SweepReport:
    """Compress the model to every target of cfg.speedups; the report (also OUT/sweep.json). `draw`
    makes OUT/sweep.png from it (without one, no plot). CaitError (one line, nothing written) for bad
    input, before any training."""
    cluster, device = join(resolve_device(cfg.template.device))
    try:
        return _sweep(cfg, progress or Silent(), draw, cluster, device)
    finally:
        leave(cluster)


def _sweep(cfg: SweepConfig, progress: Progress, draw: Optional[Draw], cluster: Cluster,
           device: torch.device) -> SweepReport:
    start = time.perf_counter()
    template = resolved(cfg.template, device, cluster.world)
    reports = on_main(cluster, lambda: check_sweep(cfg, template))  # target: its report, written before
    todo = [target for target in cfg.speedups if target not in reports]
    for target in todo:
        on_main(cluster, lambda: check_config(cfg.point(target)))  # every point's options, before slow work
    prepared = prepare(template, progress, cluster, device) if todo else None
    if prepared is not None:
        on_main(cluster, lambda: check_reach(prepared, template, todo))
    config = {k: v for k, v in jsonable_config(template).items() if k not in PER_POINT}
    points = [SweepPoint.of(reports[t], str(cfg.checkpoint(t)), resumed=True) for t in cfg.speedups if t in reports]

    def report() -> SweepReport:
        return _report(cfg, points, reports, prepared, config, time.perf_counter() - start)

    on_main(cluster, lambda: _write(cfg.out, report()))  # from here on, --resume finds this sweep
    for number, target in enumerate(todo, 1):
        progress.message(f"sweep: {target:g}x ({number} of {len(todo)} to compress)")
        points.append(_point(cfg.point(target), prepared, progress, reports))
        on_main(cluster, lambda: _write(cfg.out, report()))
    points.sort(key=lambda p: cfg.speedups.index(p.target))
    final = report()
    if draw is not None:
        final.plot_skipped = on_main(cluster, lambda: draw(final, cfg.out / PLOT_FILE))
        final.plot = None if final.plot_skipped else PLOT_FILE
    on_main(cluster, lambda: _write(cfg.out, final))
    return final


def check_sweep(cfg: SweepConfig, template: CompressConfig) -> Dict[float, CompressReport]:
    """Refuse bad targets and a folder that is not this sweep's; the points an earlier run wrote (--resume)."""
    targets = cfg.speedups
    if not targets:
        raise CaitError("no speedups to sweep: give them as --speedups 1.3 1.6 1.9 (one checkpoint each)")
    low = [t for t in targets if t <= 1.0]
    if low:
        raise CaitError(f"every speedup must be above 1.0 (1.0 is the original itself); got {names(low)}")
    labels = [names([t]) for t in targets]  # as the checkpoints are named: 1.9 and 1.90 are one target
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise CaitError(f"{', '.join(twice)} asked for more than once; each target is one checkpoint")
    if template.plan is not None or template.plan_only:
        raise CaitError("a sweep plans every target itself: --plan and --plan-only do not apply")
    if template.resume and template.overwrite:
        raise CaitError("pass --resume (keep the written points) or --overwrite (replace them), not both")
    if template.resume:
        return written_points(cfg, template)
    if cfg.out.exists() and not template.overwrite and (not cfg.out.is_dir() or any(cfg.out.iterdir())):
        raise CaitError(f"{cfg.out} already exists; choose another --out, or pass --resume to go on with its "
                        "sweep or --overwrite")
    return {}


def names(targets: Sequence[float]) -> str:
    return ", ".join(f"{t:g}x" for t in targets)


def written_points(cfg: SweepConfig, template: CompressConfig) -> Dict[float, CompressReport]:
    """The reports of the points already written in cfg.out, once its sweep.json shows the same options."""
    saved = cfg.out / SWEEP_FILE
    if not saved.is_file():
        raise CaitError(f"nothing to resume: no {SWEEP_FILE} in {cfg.out}")
    changed = changed_options(_read(saved).get("config", {}), template, SWEEP_KEYS)
    if changed:
        raise CaitError(f"cannot resume: {', '.join(changed)} differ from the sweep in {cfg.out}")
    reports = {t: cfg.checkpoint(t) / REPORT_FILE for t in cfg.speedups}
    return {t: CompressReport.from_json(_read(path)) for t, path in reports.items() if path.is_file()}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CaitError(f"cannot read {path}: {first_line(err)}") from err


def check_reach(prepared: Prepared, template: CompressConfig, targets: Sequence[float]) -> None:
    """Refuse, all in one line, the targets the planner cannot reach (as compress would, one by one)."""
    best = fastest(prepared.base, prepared.table, template.plan_config(max(targets)))
    beyond = [t for t in targets if best < t * template.plan_config(t).margin]
    if beyond:
        verb = "is" if len(beyond) == 1 else "are"
        refusal = beyond_reach(f"{names(beyond)} {verb}", best, template.plan_config(max(beyond)))
        raise CaitError(f"{refusal}; nothing was trained: sweep targets below it")


def _point(point: CompressConfig, prepared: Prepared, progress: Progress,
           reports: Dict[float, CompressReport]) -> SweepPoint:
    """Compress one target (its report joins `reports`); a CaitError (compress refused it) becomes its
    row, and the sweep goes on."""
    start = time.perf_counter()
    try:
        result = compress(point, progress, prepared)
    except Interrupted:
        raise
    except CaitError as err:
        progress.message(f"{point.target_speedup:g}x not compressed: {err}")
        return SweepPoint(point.target_speedup, str(point.out), error=str(err), seconds=time.perf_counter() - start)
    reports[point.target_speedup] = result.typed_report
    return SweepPoint.of(result.typed_report, str(point.out), time.perf_counter() - start)


def shared_work(prepared: Optional[Prepared]) -> List[SharedWork]:
    """What the points shared, and its wall time where it was timed."""
    if prepared is None:
        return []
    seconds, forwards = prepared.seconds, prepared.forwards
    work = [SharedWork("loading the model and opening the data", seconds[LOADING], per_run=True),
            SharedWork("the latency table", seconds[LATENCY_TABLE], per_run=False,
                       note="runs of compress share it too, through the latency cache: not counted"),
            SharedWork(f"building the original's forward ({forwards.runtime})", forwards.build_seconds(prepared.base),
                       per_run=True)]
    if REFERENCE in seconds:
        work.append(SharedWork(f"{REFERENCE} (its accuracy, and the outputs agreement is counted against)",
                               seconds[REFERENCE], per_run=True))
    if prepared.score is not None:
        work.append(SharedWork("the planner's scoring batch and every plan it scored", None, per_run=False,
                               note="not timed: not counted"))
    return work


def _report(cfg: SweepConfig, points: List[SweepPoint], reports: Dict[float, CompressReport],
            prepared: Optional[Prepared], config: dict, seconds: float) -> SweepReport:
    """The sweep so far; the original as the first target's point measured it (its accuracy is every
    point's: one reference)."""
    first = next((reports[t] for t in cfg.speedups if t in reports), None)
    original = first.baseline if first else None
    training = first.training if first else None
    return SweepReport(cfg.template.model, str(cfg.out), on_front(points, original), original=original,
                       timing=first.timing if first else Timing(), shared=shared_work(prepared), seconds=seconds,
                       labels_note=training.labels_note if training else None, config=config)


def _write(out: Path, report: SweepReport) -> None:
    write_json_atomic(out / SWEEP_FILE, report.to_json())
