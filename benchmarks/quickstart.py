"""The README quick start as a new user runs it: a fresh clone, a fresh venv, an empty latency cache.

Each run clones this checkout's commit, makes a new venv, points `$CAIT_CACHE` at an empty folder
and runs the README's command unchanged (its install, then its `cait compress`), timing the
compress alone; the row comes from the report.json it wrote.

    python -m benchmarks.quickstart --runs 3 --out benchmarks/results/quickstart_cpu.md
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from benchmarks import harness
from cait_cli.errors import CaitError

README_COMMAND = re.compile(r"^pip install -c constraints\.txt.*$", re.M)  # the quick start's one line
REPORT = "fashion.cait/report.json"  # where the README's command writes its report


def readme_command(repo: Path) -> str:
    found = README_COMMAND.search((repo / "README.md").read_text())
    if not found:
        raise CaitError("README.md has no quick start line (`pip install -c constraints.txt ... && cait compress ...`)")
    return found.group(0)


def _step(command: str, cwd: Path, env: Dict[str, str], log: Path) -> int:
    with log.open("w") as out:
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return done.returncode


def _last_line(log: Path) -> str:
    lines = log.read_text().strip().splitlines()
    return lines[-1] if lines else "(no output)"


def fresh_run(repo: Path, command: str, work: Path) -> Tuple[Dict[str, Any], int, str]:
    """The README's command in a fresh clone and venv with an empty cache: its report, the compress's seconds
    and the report it printed."""
    install, _, compress = command.partition(" && ")
    clone, venv = work / "cait", work / "venv"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               CAIT_CACHE=str(work / "cache"))
    env.pop("PYTHONHOME", None)
    if _step(install, clone, env, work / "install.log"):
        raise CaitError(f"the install failed: {_last_line(work / 'install.log')}")
    start = time.monotonic()
    _step(compress, clone, env, work / "run.log")  # exit 3 (landed outside the band) still writes a report
    seconds = round(time.monotonic() - start)
    if not (clone / REPORT).is_file():
        raise CaitError(f"the quick start wrote no report: {_last_line(work / 'run.log')}")
    return json.loads((clone / REPORT).read_text()), seconds, printed_report((work / "run.log").read_text())


def printed_report(output: str) -> str:
    """What the quick start printed from its report table on (the progress lines before it dropped)."""
    lines = output.rstrip().splitlines()
    start = next((i for i, line in enumerate(lines) if "original vs compressed" in line), 0)
    return "\n".join(lines[start:])


def add_row(table: harness.Table, run: int, report: Dict[str, Any], seconds: int) -> None:
    low, high = report["measured_speedup_range"]
    table.add(run, f"merge {harness.plan_cell(report)}", harness.landing_cell(report),
              f"{report['measured_speedup']:.2f}x ({low:.2f}-{high:.2f})", harness.top1_cell(report), f"{seconds} s")


def headline(reports: List[Dict[str, Any]]) -> str:
    """Every run's measured speedup, and the range of their top-1 changes."""
    deltas = [100 * (r["compressed"]["top1"] - r["baseline"]["top1"]) for r in reports]
    speeds = ", ".join(f"{r['measured_speedup']:.2f}x" for r in reports)
    return f"{speeds}; top-1 {min(deltas):+.1f} to {max(deltas):+.1f} pt"


def main() -> None:
    parser = harness.make_parser(__doc__, "out")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    repo = harness.ROOT
    command = readme_command(repo)
    table = harness.Table("run", "plan", "landing measurements", "measured speedup (repeat range)",
                          "top-1 original -> compressed", "wall time", echo=True)
    reports: List[Dict[str, Any]] = []
    printed = ""
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="cait-quickstart-") as work:
            report, seconds, output = fresh_run(repo, command, Path(work))
        add_row(table, run, report, seconds)
        reports.append(report)
        printed = printed or output
    body = [f"Command (README): `{command}`", "",
            "Each run: `git clone` of this commit, a new venv, `$CAIT_CACHE` pointing at an empty folder; wall time "
            "of the compress alone.", "", *table.lines, "", "What run 1 printed:", "", "```text", printed, "```"]
    harness.write_results(args.out, f"README quick start, {args.runs} fresh runs", body, headline=headline(reports))


if __name__ == "__main__":
    harness.run_script(main)
