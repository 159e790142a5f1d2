"""Writes that either complete or leave nothing: temp path beside the target, then rename."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple, Type

from .errors import CaitError, first_line

# torch.save reports a full disk as RuntimeError ("PytorchStreamWriter failed writing file ..."), not OSError
WRITE_ERRORS: Tuple[Type[BaseException], ...] = (OSError, RuntimeError)


@contextmanager
def reported_write(path: Path, size: int, errors: Tuple[Type[BaseException], ...] = WRITE_ERRORS) -> Iterator[None]:
    """A failed write of `size` bytes to `path` becomes one CaitError line: why, and the space
    it needed against the space free there (a full disk or a quota is the usual cause)."""
    try:
        yield
    except errors as err:
        reason = getattr(err, "strerror", None) or first_line(err)
        raise CaitError(f"cannot write {path}: {reason} ({space_note(Path(path), size)})") from err


def space_note(path: Path, size: int) -> str:
    """What a write needs against what its disk has free: 'needs 12.0 MB, 3.1 MB free there'."""
    free = free_bytes(path)
    needs = f"needs {readable_size(size)}"
    return needs if free is None else f"{needs}, {readable_size(free)} free there"


def free_bytes(path: Path) -> Optional[int]:
    """Free bytes on the disk `path` is (or would be) on; None if that cannot be told."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def readable_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


class atomic_directory:
    """Context manager: yields a temp dir beside `path`, renamed to `path` on success."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path, self.overwrite = Path(path), overwrite

    def __enter__(self) -> Path:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        except OSError as err:
            raise CaitError(f"cannot write to {parent}: {err.strerror or err}") from err
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise CaitError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            return False
        old = None
        try:
            if self.path.exists() and self.overwrite:
                old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
                os.replace(self.path, old)
            os.replace(self.tmp, self.path)
        except OSError as err:  # put the old directory back and leave no temporary one
            shutil.rmtree(self.tmp, ignore_errors=True)
            if old is not None and not self.path.exists():
                with suppress(OSError):
                    os.replace(old, self.path)
            raise CaitError(f"cannot write {self.path}: {err.strerror or err}") from err
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


class atomic_file:
    """Context manager: yields a temp file path beside `path`, renamed to `path` on success.

    On an exception (a failed check included) the temp file is removed and `path` is left
    as it was.
    """

    def __init__(self, path: Path, overwrite: bool = True) -> None:
        self.path, self.overwrite = Path(path), overwrite

    def __enter__(self) -> Path:
        if self.path.exists() and not self.overwrite:
            raise CaitError(f"{self.path} already exists; choose another --out or pass --overwrite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as err:
            raise CaitError(f"cannot write to {self.path.parent}: {err.strerror or err}") from err
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise CaitError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            return False
        try:
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.tmp.unlink(missing_ok=True)
            raise CaitError(f"cannot write {self.path}: {err.strerror or err}") from err
        return False


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
