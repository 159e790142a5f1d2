"""Finished benchmark jobs kept on disk, so a long run that is stopped can go on where it was.

A job (one method at one target and seed) yields rows and the models they describe. Each
finished job is written to `root/<key>.pt` (temp file, rename); a later run with the same
settings loads it instead of training again. Models are pickled whole (their classes are
plain modules of this repository, timm and torch-pruning), which is only safe for files this
machine wrote: the cache is a private scratch folder, never a download.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from cait_cli.atomic import atomic_file

Finished = List[Tuple[Any, Optional[nn.Module]]]  # (row, model or None) pairs


def settings_key(reference: nn.Module, settings: Dict[str, Any]) -> str:
    """A short name for the reference's exact weights plus every setting that changes a job's result."""
    digest = hashlib.sha256()
    for name, tensor in reference.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


class JobCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def run(self, key: str, job: Callable[[], Finished]) -> Tuple[Finished, bool]:
        """The job's rows and models, from disk when it finished before; True when they were."""
        path = self.path(key)
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            return list(zip(saved["rows"], saved["models"])), True
        done = job()
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save({"rows": [row for row, _ in done], "models": [model for _, model in done]}, tmp)
        return done, False
