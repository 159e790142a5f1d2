"""How the pipeline reports progress, without knowing who listens (CLI, tests, notebooks)."""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def message(self, text: str) -> None:
        """A line of news ("planning...", the plan, a warning)."""

    def start(self, phase: str, total: int, done: int = 0) -> None:
        """A long phase of `total` steps begins (at `done` when resumed)."""

    def advance(self, step: int, **metrics: float) -> None:
        """Step `step` (1-based count done) finished, with metrics such as loss."""

    def stop(self) -> None:
        """The current phase ended."""


class Silent:
    """Progress that reports nothing."""

    def message(self, text: str) -> None:
        pass

    def start(self, phase: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, step: int, **metrics: float) -> None:
        pass

    def stop(self) -> None:
        pass
