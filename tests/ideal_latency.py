"""A latency table proportional to the work, so plans do not depend on a busy machine's timings."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from cait_cli.pipeline.latency import KEEPS, LatencyTable, table_key

TOKENS = [2, 5, 9, 17, 33, 65]


def ideal_table(key: str = "ideal") -> LatencyTable:
    work = [[n * (0.2 + 0.8 * k) for k in KEEPS] for n in TOKENS]
    return LatencyTable(key, TOKENS, list(KEEPS), work, [[2 * w for w in row] for row in work],
                        [0.01 * n for n in TOKENS], 1.0)


def write_ideal_tables(cache: Path, model: torch.nn.Module, batch: int) -> Path:
    """Cache entries for `model` on the CPU at 1, 2 and this process's thread counts (torchrun sets one)."""
    cache.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    try:
        for n in {1, 2, before}:
            torch.set_num_threads(n)
            key = table_key(model, torch.device("cpu"), batch, torch.float32)
            (cache / f"{key}.json").write_text(json.dumps(ideal_table(key).__dict__))
    finally:
        torch.set_num_threads(before)
    return cache
