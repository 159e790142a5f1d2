"""Latency tables proportional to the work, cached, so plans do not depend on a busy machine's timings."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from support import synthetic_table

from cait_cli.pipeline.planning.latency import table_key


def write_ideal_tables(cache: Path, model: torch.nn.Module, batch: int) -> Path:
    """Cache entries for `model` on the CPU at 1, 2 and this process's thread counts (torchrun sets one),
    for channel multiples 1 and 8."""
    cache.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    try:
        for n in {1, 2, before}:
            torch.set_num_threads(n)
            for multiple in (1, 8):
                key = table_key(model, torch.device("cpu"), batch, torch.float32, multiple)
                (cache / f"{key}.json").write_text(json.dumps(asdict(replace(synthetic_table(model), key=key))))
    finally:
        torch.set_num_threads(before)
    return cache
