"""Interleaved speed measurement: the round-robin order and the paired ratios."""
import time

import torch
import torch.nn as nn

import pytest

from cait_cli.errors import CaitError
from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    measure_throughput,
    paired_speedup,
    speedup_estimate,
)
from cait_cli.pipeline.measuring.report import band_stop


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


def test_the_speedup_is_the_median_of_the_paired_ratios():
    # a neighbour's load only slows runs down: repeat 2 of "a" and repeat 3 of "b" were disturbed
    a, b = [200.0, 120.0, 198.0, 190.0, 150.0], [100.0, 101.0, 60.0, 99.0, 100.0]
    ratios = [x / y for x, y in zip(a, b)]
    assert speedup_estimate(a, b) == sorted(ratios)[2]


def stop_after(rates_a, rates_b, band, least=3):
    stop = band_stop("a", "b", band, least)
    for n in range(1, len(rates_a) + 1):
        if stop({"a": rates_a[:n], "b": rates_b[:n]}):
            return n
    return None


def test_a_clear_answer_stops_early_and_a_close_one_runs_on():
    steady_a, steady_b = [300.0] * 12, [100.0] * 12  # 3.0x, far above a 1.84-2.05x band
    assert stop_after(steady_a, steady_b, (1.84, 2.05)) == 3
    near_a = [204.0, 206.0, 205.0, 207.0, 204.0, 206.0]  # 2.04-2.07x: on the band's upper edge
    assert stop_after(near_a, [100.0] * 6, (1.84, 2.05)) is None  # medians 2.05 (in) and 2.055 (above)
    settling = [150.0, 190.0, 195.0, 196.0, 196.0, 196.0, 196.0]  # a disturbed start, then 1.96x
    # medians 1.90, 1.925, 1.95: inside, and moving by 2.6%, less than the 5% to the nearest edge
    assert stop_after(settling, [100.0] * 7, (1.84, 2.05)) == 5


def test_measurement_stops_when_the_rule_says_so():
    log = []
    cfg = SpeedConfig(batch_size=2, warmup=0, repeats=9, iters_per_repeat=1, min_run_seconds=0.0)
    result = measure_throughput({"a": Logged("a", log)}, (3, 4, 4), cfg, torch.device("cpu"),
                                stop=lambda rates: len(rates["a"]) == 4)
    assert len(result["a"].per_repeat) == 4


def test_unknown_runtimes_are_refused_in_one_line():
    for cfg, message in ((SpeedConfig(runtime="jit"), "unknown runtime 'jit'"),
                         (SpeedConfig(runtime="cuda-graphs"), "needs a CUDA GPU")):
        with pytest.raises(CaitError, match=message):
            cfg.check(torch.device("cpu"))
