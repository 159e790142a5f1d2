"""Interleaved speed measurement: the round-robin order and the paired ratios."""
import time

import torch
import torch.nn as nn

from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    measure_throughput,
    paired_speedup,
)


class Logged(nn.Module):
    """Records when it runs; returns its input."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def test_round_robin_reverses_every_other_repeat():
    log = []
    models = {"a": Logged("a", log), "b": Logged("b", log)}
    cfg = SpeedConfig(batch_size=2, warmup=1, repeats=4, iters_per_repeat=1, min_run_seconds=0.0)
    result = measure_throughput(models, (3, 4, 4), cfg, torch.device("cpu"))
    # warm-up, one pass each to size the runs, then A B / B A
    assert log == ["a", "b"] + ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(r.per_repeat) == 4 for r in result.values())
    ratio, low, high = paired_speedup(result, "a", "b")
    assert low <= ratio <= high


class Slow(Logged):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return super().forward(x)


def test_short_passes_are_repeated_until_a_run_lasts_long_enough():
    log = []
    cfg = SpeedConfig(batch_size=2, warmup=1, repeats=3, iters_per_repeat=1, min_run_seconds=0.05)
    result = measure_throughput({"a": Slow("a", log)}, (3, 4, 4), cfg, torch.device("cpu"))
    runs = len(log) - 2  # after the warm-up pass and the sizing pass
    assert runs % 3 == 0 and 2 <= runs // 3 <= 5  # about 0.05 s / 0.01 s passes per run
    assert result["a"].throughput < 2 / 0.01  # images counted per pass, not per run
