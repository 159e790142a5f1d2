"""Interleaved speed measurement: the round-robin order and the paired ratios."""
import torch
import torch.nn as nn

from cait_cli.pipeline.measure import SpeedConfig, measure_throughput, paired_speedup


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
    cfg = SpeedConfig(batch_size=2, warmup=1, repeats=4, iters_per_repeat=1)
    result = measure_throughput(models, (3, 4, 4), cfg, torch.device("cpu"))
    assert log == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B / B A
    assert all(len(r.per_repeat) == 4 for r in result.values())
    ratio, low, high = paired_speedup(result, "a", "b")
    assert low <= ratio <= high
