"""`cait sweep` against one `cait compress` per target: both timed, every point compared.

    python -m benchmarks.sweep --out benchmarks/results/sweep_cpu.md

Runs `cait sweep` on the bundled reference at five targets (1.3-2.5x), then `cait compress` once per
target with the same options, each command a process of its own as a user runs it. Each side starts
from an empty latency cache of its own (the separate runs share theirs, as one user's runs do), unless
--latency-cache names one for both (smoke runs). Writes OUT (the wall times, the sweep's own estimate
of what it saved, and per target the speedup and top-1 of the sweep's point beside the single run's)
and copies the sweep's plot to OUT with .png. Nothing else should run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks import harness
from cait_cli.errors import CaitError

TITLE = "cait sweep against one compress per target"


def parser() -> argparse.ArgumentParser:
    parser = harness.make_parser(__doc__, "model", "data", "calib_steps", "finetune_steps", "seed", "runtime",
                                 "bench_batch", "latency_cache", "out", device="cpu", workers=0,
                                 targets=[1.3, 1.6, 1.9, 2.2, 2.5],
                                 work=harness.Default(None, "scratch folder, kept (default: a temporary one)"))
    return parser


def common_options(args: argparse.Namespace) -> List[str]:
    """The options both sides run with."""
    options = ["--data", args.data, "--calib-steps", str(args.calib_steps), "--finetune-steps",
               str(args.finetune_steps), "--seed", str(args.seed), "--device", args.device, "--runtime", args.runtime,
               "--workers", str(args.workers)]
    return options + (["--bench-batch-size", str(args.bench_batch_size)] if args.bench_batch_size else [])


def timed(command: List[str], cache: Path, log: Path) -> float:
    """Wall seconds of `cait COMMAND...` in a process of its own; its output goes to `log`. Exit 3 (a point
    slower than asked) still wrote its results; any other failure is one line."""
    env = dict(os.environ, CAIT_CACHE=str(cache))
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-m", "cait_cli", *command], env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    if code not in (0, 3):
        last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
        raise CaitError(f"`cait {command[0]}` exited {code}: {last} (log: {log})")
    return seconds


def run_sweep(args: argparse.Namespace, work: Path, cache: Path) -> Tuple[Dict[str, Any], float]:
    out = work / "sweep"
    seconds = timed(["sweep", args.model, "--speedups", *map(str, args.targets), "--out", str(out), "--overwrite",
                     *common_options(args)], cache, work / "sweep.log")
    return json.loads((out / "sweep.json").read_text()), seconds


def run_compresses(args: argparse.Namespace, work: Path, cache: Path) -> List[Tuple[Optional[Dict[str, Any]], float]]:
    """Each target's report.json (None when compress refused it) and its wall seconds."""
    runs = []
    for target in args.targets:
        out = work / "compress" / f"{target:g}x.cait"
        try:
            seconds = timed(["compress", args.model, "--target-speedup", str(target), "--out", str(out),
                             "--overwrite", *common_options(args)], cache, work / f"compress_{target:g}x.log")
        except CaitError as err:
            print(f"{target:g}x: {err}", flush=True)
            runs.append((None, float("nan")))
            continue
        runs.append((json.loads((out / "report.json").read_text()), seconds))
    return runs


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _speed(ratio: Optional[float], spread: Optional[List[float]], landed: Optional[bool]) -> str:
    if ratio is None:
        return "—"
    low, high = spread or (None, None)
    repeats = f" ({low:.2f}-{high:.2f})" if low is not None else ""
    return f"{ratio:.2f}x{repeats}" + ("" if landed else ", outside its band")


def body(args: argparse.Namespace, swept: Dict[str, Any], sweep_seconds: float,
         runs: List[Tuple[Optional[Dict[str, Any]], float]]) -> Tuple[List[str], str]:
    """The results' lines and headline."""
    table = harness.Table("target", "sweep: measured speedup", "sweep: top-1", "compress: measured speedup",
                          "compress: top-1", "top-1, sweep - compress (pt)", "wall time (s), sweep's point / compress")
    differences = []
    for point, (report, seconds) in zip(swept["points"], runs):
        single = report["compressed"] if report else {}
        ours, theirs = point["top1"], single.get("top1")
        if ours is not None and theirs is not None:
            differences.append(100 * (ours - theirs))
        table.add(f"{point['target_speedup']:g}x",
                  point["error"] or _speed(point["measured_speedup"], point["measured_speedup_range"], point["landed"]),
                  _pct(ours), _speed(report["measured_speedup"], report["measured_speedup_range"], report["landed"])
                  if report else "refused", _pct(theirs), f"{differences[-1]:+.2f}" if ours is not None and
                  theirs is not None else "—", f"{point['seconds'] or 0:.0f} / {seconds:.0f}")
    separate = sum(seconds for _, seconds in runs)
    estimate = swept["saved_seconds_estimate"]
    original = swept["original"] or {}
    lines = [f"Reference {args.model}, data {args.data}; {args.calib_steps} calibration and {args.finetune_steps} "
             f"fine-tuning steps, seed {args.seed}, {swept['device']}, {swept['precision']}, batch {swept['batch_size']}; "
             f"the original's top-1 {_pct(original.get('top1'))}.", "",
             "The sweep ran first, then one compress per target, one after another, each a process of its own.", "",
             f"Wall time: the sweep {sweep_seconds:.0f} s; {len(runs)} separate compress runs {separate:.0f} s in all "
             f"(the sweep saved {separate - sweep_seconds:.0f} s; its own estimate of what sharing saved: "
             f"{estimate:.0f} s).", "",
             "Shared by the sweep's points: " + "; ".join(
                 f"{w['what']}" + (f" {w['seconds']:.1f} s" if w["seconds"] is not None else "")
                 + (f" ({w['note']})" if w["note"] else "") for w in swept["shared"]) + ".", "",
             *table.lines]
    if args.out:
        lines += ["", f"The sweep's plot: `{harness.beside(args.out, '.png').name}` beside this file (measured speedup "
                  "against top-1, the original, the Pareto front)."]
    gaps = f"{min(differences):+.2f} to {max(differences):+.2f} pt" if differences else "—"
    headline = (f"sweep {sweep_seconds:.0f} s vs {len(runs)} compress runs {separate:.0f} s (estimate of the "
                f"saving {estimate:.0f} s); top-1 sweep - compress {gaps}")
    return lines, headline


def main() -> None:
    args = parser().parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cait-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    caches = [args.latency_cache] * 2 if args.latency_cache else [work / "cache-sweep", work / "cache-compress"]
    swept, sweep_seconds = run_sweep(args, work, caches[0])
    runs = run_compresses(args, work, caches[1])
    lines, headline = body(args, swept, sweep_seconds, runs)
    harness.write_results(args.out, TITLE, lines, headline, device=args.device)
    plot = work / "sweep" / "sweep.png"
    if args.out and plot.is_file():
        shutil.copyfile(plot, harness.beside(args.out, ".png"))


if __name__ == "__main__":
    harness.run_script(main)
