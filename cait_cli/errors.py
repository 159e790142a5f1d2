"""User-facing errors: one clear line, no traceback."""


class CaitError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line and exits non-zero; library
    callers can catch it like any other exception.
    """


class Interrupted(CaitError):
    """The user stopped a run (Ctrl-C); the message says how to resume."""

    exit_code = 130
