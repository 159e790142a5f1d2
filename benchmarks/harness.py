"""What every benchmark script shares: its common options, the header its results start with, its
markdown tables, the results file (the latest run in full, then a History of earlier runs, one row
each) and how its main runs (a CaitError is one line on stderr and the exit code).

    parser = harness.make_parser(__doc__, "model", "seed", "out", device="cpu")
    ...
    table = harness.Table("model", "speedup", echo=True)   # rows printed as they come
    table.add(name, f"{ratio:.2f}x")
    harness.write_results(args.out, TITLE, [..., *table.lines], headline=f"{name} {ratio:.2f}x")

A results file reads:

    # Title
    Command: `python -m benchmarks.speed --out ...`
    Run: 2026-12-02 10:11 UTC, commit c72c066; AMD EPYC, 2 threads; torch 2.14.1, timm 1.0.31, Python 3.12.3
    Headline: the figures a History row keeps
    ...the run's own output...
    ## History
    | date | commit | command | headline |      <- one row per earlier run, newest first

Writing it again moves the previous run's date, commit, command and headline into History (its full
output stays in git's history of the file).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import CaitError
from cait_cli.pipeline.measuring.measure import device_name, resolve_device

ROOT = Path(__file__).resolve().parent.parent
HISTORY = "## History"
HISTORY_COLUMNS = ("date", "commit", "command", "headline")
LIBRARIES = ("torch", "timm", "onnxruntime", "torch_pruning")  # versions named in the header when loaded


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Default:
    """A script's own default, and optionally its own help, for a shared option (or: it is required)."""

    value: Any = None
    help: Optional[str] = None
    required: bool = False


# name -> (flag, add_argument settings); one flag may serve two names whose meanings differ
OPTIONS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "model": ("--model", dict(default="examples/reference", help="timm name or model folder")),
    "models": ("--models", dict(nargs="+", help="timm names or model folders")),
    "reference": ("--reference", dict(default="examples/reference", help="the uncompressed model (a folder)")),
    "data": ("--data", dict(default="examples/fashion_mnist", help="ImageFolder root with train/ and val/")),
    "calib_data": ("--calib-data", dict(default="examples/fashion_mnist",
                                        help="ImageFolder root whose train/ calibrates int8 (val/ checks it)")),
    "target": ("--target", dict(type=float, default=1.9, help="target speedup")),
    "targets": ("--targets", dict(type=float, nargs="+", default=[1.5, 1.9, 2.5], help="target speedups")),
    "calib_steps": ("--calib-steps", dict(type=int, default=50, help="CDCP calibration steps")),
    "finetune_steps": ("--finetune-steps", dict(type=int, default=150, help="fine-tuning steps")),
    "train_steps": ("--steps", dict(type=int, default=300, help="training budget of every trained model (steps)")),
    "timed_steps": ("--steps", dict(type=int, help="timed training steps")),
    "train_batch": ("--batch-size", dict(type=int, help="training batch")),
    "timed_batch": ("--batch-size", dict(type=int, help="batch of the timed forward passes")),
    "bench_batch": ("--bench-batch-size", dict(type=int, default=None,
                                               help="batch of compress's speed measurements (None: compress's own)")),
    "lr": ("--lr", dict(type=float, default=1e-4, help="learning rate")),
    "seed": ("--seed", dict(type=int, default=0)),
    "device": ("--device", dict(default="auto")),
    "runtime": ("--runtime", dict(default="auto", help="the runtime compress plans, lands and reports under")),
    "latency_cache": ("--latency-cache", dict(type=Path, help="folder of latency tables (None: a new one)")),
    "work": ("--work", dict(type=Path, help="scratch folder; finished jobs kept there are reused by a later run "
                                            "with the same reference and budget (delete it to start again)")),
    "repeats": ("--repeats", dict(type=int, help="timed repeats")),
    "iters": ("--iters", dict(type=int, default=2, help="forward passes per timed repeat")),
    "warmup": ("--warmup", dict(type=int, default=2, help="untimed runs before the timed ones")),
    "threads": ("--threads", dict(type=int, default=torch.get_num_threads, help="torch threads")),
    "channel_multiple": ("--channel-multiple", dict(type=int, default=8, help="kept widths are multiples of it")),
    "workers": ("--workers", dict(type=int, help="data loading processes")),
    "out": ("--out", dict(type=Path, help="results file (markdown: this run, then the History of earlier "
                                          "runs); None: print only")),
    "out_stem": ("--out", dict(type=Path, help="results files OUT.md (this run, then the History of earlier "
                                               "runs), OUT.json and OUT.png")),
}


def add_options(parser: argparse.ArgumentParser, *names: str, **defaults: Any) -> None:
    """The shared options `names`, then those named in `defaults` with the script's own default
    (a plain value, or Default(value, help))."""
    for name in dict.fromkeys([*names, *defaults]):
        flag, settings = OPTIONS[name]
        settings = dict(settings)
        if name in defaults:
            own = defaults[name] if isinstance(defaults[name], Default) else Default(defaults[name])
            settings["default"] = own.value
            settings["help"] = own.help or settings.get("help")
            if own.required:
                settings["required"] = True
                del settings["default"]
        if callable(settings.get("default")):  # evaluated when the parser is made (torch's threads)
            settings["default"] = settings["default"]()
        parser.add_argument(flag, **settings)


def make_parser(doc: str, *names: str, **defaults: Any) -> argparse.ArgumentParser:
    """An argument parser described by the docstring's first line, with the shared options given."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_options(parser, *names, **defaults)
    return parser


# ----------------------------------------------------------------------------- the run's header


def command_line() -> str:
    """How this process was started, as one can type it again: `python -m benchmarks.x ARGS` or
    `python path/x.py ARGS`, OMP_NUM_THREADS first when it is set."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("benchmarks."):
        program = ["python", "-m", spec.name]
    else:
        script = Path(sys.argv[0])
        if script.is_absolute() and script.is_relative_to(Path.cwd()):
            script = script.relative_to(Path.cwd())
        program = ["python", str(script)]
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(program + sys.argv[1:])


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def current_commit() -> str:
    """The checkout's short commit, marked when tracked code differs from it ("—" outside git)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "—"
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return f"{commit} + uncommitted changes" if changed else commit


def _versions() -> Dict[str, str]:
    """Versions of the LIBRARIES this process has loaded (a module's own, with its build tag: 2.14.1+cu130)."""
    versions = {}
    for name in LIBRARIES:
        if name in sys.modules:
            try:
                versions[name] = getattr(sys.modules[name], "__version__", None) or metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = "?"
    return versions


@dataclass
class Run:
    """Who made a result: the command, when, from which commit, on what, with which versions."""

    command: str
    date: str
    commit: str
    device: str  # what was measured on: the CPU's name, or the accelerator's
    cpu: str
    threads: int
    versions: Dict[str, str] = field(default_factory=dict)
    python: str = ""

    @classmethod
    def now(cls, device: Union[str, torch.device, None] = None) -> "Run":
        """This run; `device` (a name such as "auto" or "cuda", or a device) is what it measured on
        when not the CPU."""
        cpu = device_name(torch.device("cpu"))
        device = resolve_device(device) if isinstance(device, str) else device
        measured = device_name(device) if device is not None and device.type != "cpu" else cpu
        return cls(command_line(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), current_commit(),
                   measured, cpu, torch.get_num_threads(), _versions(), platform.python_version())

    @classmethod
    def of(cls, meta: Dict[str, Any]) -> "Run":
        """The run a results JSON's meta records (meta["run"]); files older than this module kept only
        command, device, threads and torch at the top of meta."""
        if "run" in meta:
            return cls(**meta["run"])
        return cls(meta["command"], "—", "—", meta["device"], meta["device"], meta["threads"],
                   {"torch": meta["torch"]}, meta.get("python", ""))

    def lines(self) -> List[str]:
        machine = f"{self.cpu}, {self.threads} threads"
        if self.device != self.cpu:
            machine = f"{self.device} (host: {machine})"
        versions = ", ".join(f"{name.replace('_', '-')} {v}" for name, v in self.versions.items())
        python = f", Python {self.python}" if self.python else ""
        return [f"Command: `{self.command}`", "",
                f"Run: {self.date}, commit {self.commit}; {machine}; {versions}{python}"]


# ----------------------------------------------------------------------------- tables


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


class Table:
    """A markdown table made row by row; with `echo`, each line is printed as it comes (long runs
    show their progress). A short row is padded with empty cells (a refusal in one cell)."""

    def __init__(self, *columns: str, echo: bool = False) -> None:
        self.width, self.echo = len(columns), echo
        self.lines: List[str] = []
        self._emit(f"| {' | '.join(columns)} |")
        self._emit("|" + "---|" * self.width)

    def add(self, *cells: Any) -> str:
        padded = [_cell(c) for c in cells] + [""] * (self.width - len(cells))
        return self._emit(f"| {' | '.join(padded)} |")

    def _emit(self, line: str) -> str:
        self.lines.append(line)
        if self.echo:
            print(line, flush=True)
        return line


def table_cells(line: str) -> List[str]:
    """The cells of a markdown table row (escaped pipes kept inside their cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


# ----------------------------------------------------------------------------- results files


@dataclass
class Previous:
    """What a results file says of its own run (the one a new run moves into History)."""

    date: str
    commit: str
    command: str
    headline: str
    history: List[str]  # its History rows, newest first

    def row(self) -> str:
        return f"| {_cell(self.date)} | {_cell(self.commit)} | `{_cell(self.command)}` | {_cell(self.headline)} |"

    def same_run(self, run: Run) -> bool:
        return (self.date, self.commit, self.command) == (run.date, run.commit, run.command)


def _field(pattern: str, text: str) -> Optional[str]:
    match = re.search(pattern, text, re.M)
    return match.group(1).strip() if match else None


def read_previous(path: Path) -> Optional[Previous]:
    """The run a results file records, and its History; None when there is no file.

    A file written before this module (no Run line) is dated by the commit that recorded it."""
    if not path.is_file():
        return None
    text = path.read_text()
    own, _, history = text.partition(f"\n{HISTORY}\n")
    rows = [line for line in history.splitlines() if line.startswith("|")][2:]  # past the header and rule
    command = _field(r"^[Cc]ommand: `?(.+?)`?$", own) or "—"
    run = re.search(r"^Run: (.+?), commit (.+?);", own, re.M)
    if run:
        date, commit = run.group(1), run.group(2)
    else:
        recorded = _git("log", "-1", "--format=%ad %h", "--date=short", "--", str(path.resolve()))
        date, commit = (f"{part} (recorded)" for part in recorded.split()) if recorded else ("—", "—")
    return Previous(date, commit, command, _field(r"^Headline: (.+)$", own) or "—", rows)


def history_lines(previous: Optional[Previous], run: Run) -> List[str]:
    """The History section: the previous file's run (unless it is this one, re-rendered) above its rows."""
    if previous is None:
        return []
    rows = previous.history if previous.same_run(run) else [previous.row(), *previous.history]
    if not rows:
        return []
    return [HISTORY, "", "Earlier runs, newest first (their full output is in git's history of this file, or where a "
            "row says).", "", *Table(*HISTORY_COLUMNS).lines, *rows, ""]


def results_text(title: str, run: Run, headline: str, body: Sequence[str], previous: Optional[Previous]) -> str:
    lines = [f"# {title}", "", *run.lines(), "", f"Headline: {headline}", "", *body]
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines + ["", *history_lines(previous, run)]).rstrip("\n") + "\n"


RESULT_EXTENSIONS = (".md", ".json", ".png")  # what a benchmark writes beside its --out


def beside(out: Path, ext: str) -> Path:
    """The file `ext` of the result --out names: out with its extension swapped when it has one of
    RESULT_EXTENSIONS, else out + ext (a stem such as proof_2.5x_cpu keeps its dots, which
    Path.with_suffix would cut to proof_2.md)."""
    return out.with_suffix(ext) if out.suffix in RESULT_EXTENSIONS else out.with_name(out.name + ext)


def write_results(out: Optional[Path], title: str, body: Sequence[str], headline: str,
                  run: Optional[Run] = None, device: Union[str, torch.device, None] = None) -> str:
    """Print the results (title, the run's header, headline, body) and, when `out` is given, write them
    there with a History carried over from the file `out` held before, one row for the run it recorded.
    `run`: who made them (default: this process, measuring on `device`)."""
    run = run or Run.now(device)
    text = results_text(title, run, headline, body, read_previous(out) if out else None)
    print(text, flush=True)
    if out:
        write_text_atomic(out, text)
    return text


# ----------------------------------------------------------------------------- cells of a compress report


def merges(plan: Dict[str, Any], sep: str = ",") -> str:
    """The blocks a report's plan merges after: "3,7", or "none"."""
    return sep.join(str(block) for block, _ in plan["schedule"]) or "none"


def plan_cell(report: Dict[str, Any]) -> str:
    """A report's plan: "3,7; keep 71%"."""
    return f"{merges(report['plan'])}; keep {report['plan']['keep']:.0%}"


def landing_cell(report: Dict[str, Any]) -> str:
    """The speedups landing measured, in order: "1.57x / 1.95x"."""
    cell = " / ".join(f"{attempt['measured']:.2f}x" for attempt in report["attempts"])
    error = report.get("first_prediction_error")
    return cell if error is None else f"{cell} (first predicted {error:+.0%})"


def top1_cell(report: Dict[str, Any]) -> str:
    """Top-1 before and after compression: "79.4% -> 80.2% (+0.8 pt)"."""
    base, small = report["baseline"]["top1"], report["compressed"]["top1"]
    return f"{100 * base:.1f}% -> {100 * small:.1f}% ({100 * (small - base):+.1f} pt)"


def spread(values: Iterable[float], fmt: str = "{:.2f}x") -> str:
    """"low-high" of some figures ("1.80x-2.18x"), one figure when they agree, "—" when there are none."""
    values = sorted(values)
    if not values:
        return "—"
    low, high = fmt.format(values[0]), fmt.format(values[-1])
    return low if low == high else f"{low}-{high}"


def run_script(main: Callable[[], None]) -> None:
    """Run a script's main: a CaitError becomes one line on stderr and its exit code."""
    try:
        main()
    except CaitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
