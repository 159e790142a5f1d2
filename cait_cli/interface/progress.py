"""Progress for the terminal: Rich bars on a TTY, plain lines in logs and CI."""
from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class RichProgress:
    """Implements cait_cli.pipeline.progress.Progress."""

    def __init__(self, console: Console, plain_every: int = 10) -> None:
        self.console = console
        self.plain_every = plain_every
        self._bar: Optional[Progress] = None
        self._task = None
        self._phase, self._total, self._t0, self._done0 = "", 0, 0.0, 0

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self._phase, self._total, self._t0, self._done0 = phase, total, time.monotonic(), done
        if self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console)
            self._bar.start()
            self._task = self._bar.add_task(phase, total=total, completed=done, metrics="")
        else:
            self.console.print(f"{phase}: {total} steps" + (f", resuming at {done}" if done else ""))

    def advance(self, step: int, **metrics: float) -> None:
        rate = (step - self._done0) / max(1e-9, time.monotonic() - self._t0)
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" {rate:.2f} steps/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, metrics=text)
        elif step % self.plain_every == 0 or step == self._total:
            eta = (self._total - step) / rate if rate > 0 else 0.0
            self.console.print(f"{self._phase} {step}/{self._total} {text} eta {eta:.0f}s", highlight=False)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
