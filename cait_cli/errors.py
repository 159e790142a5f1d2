"""User-facing errors: one clear line, no traceback."""
from __future__ import annotations


class CaitError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line and exits non-zero; library
    callers can catch it like any other exception.
    """


class Interrupted(CaitError):
    """The user or a scheduler stopped a run (Ctrl-C, SIGTERM); the message says how to resume.

    `exit_code`: what a shell reports for a process that signal ended, 128 + its number
    (Ctrl-C 130, SIGTERM 143).
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_network_error(err: BaseException | None) -> bool:
    """Whether `err`, or an exception it came from, is a connection failure or a time-out."""
    while err is not None:
        name = type(err).__name__
        if isinstance(err, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
            return True
        err = err.__cause__ or err.__context__
    return False

