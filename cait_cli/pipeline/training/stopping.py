"""A stop from outside (SIGTERM, as schedulers and `kill` send it) handled as Ctrl-C is.

Python turns Ctrl-C (SIGINT) into KeyboardInterrupt wherever the main thread stands;
`sigterm_raises` does the same for SIGTERM (Terminated) while a training loop runs, so the
loop can save its checkpoint and say how to resume either way. Outside the block the
previous handler is back (by default SIGTERM ends the process at once).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so `except Exception` lets it by."""


def exit_code(stop: BaseException) -> int:
    """What a shell reports for a process the stop's signal ended: 128 + its number (130, 143)."""
    return 128 + int(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated; the previous handler is restored after it.

    Only the main thread may install a signal handler: in any other this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:  # None: the previous handler was not installed from Python; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
