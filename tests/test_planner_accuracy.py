"""The planner's predictions against measurements on a simulated device (exact, repeatable timings).

On the simulated device every op has a launch cost whatever its size, as framework overhead has
on a real one; the original timm model runs fewer ops than the CAIT model it becomes, so a
planner that predicts its own untouched CAIT model as the baseline predicts every plan too fast
(+7% to +11% here, as on the CPU: benchmarks/results/planner_accuracy_cpu.md).
"""
import tempfile
from pathlib import Path

import pytest
import torch
from simulated_device import simulated_device
from support import tiny_vit

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.variants import compressed_variant
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.planning.plan import SpeedModel

PLANS = [([], 0.5), ([1], 1.0), ([1, 2], 0.6), ([1, 2, 3], 0.35)]  # merge blocks, kept MAC share
FAMILIES = {"class token": {}, "attention-pooled, no class token": dict(class_token=False, global_pool="map")}


@pytest.mark.parametrize("family", FAMILIES)
def test_predicted_speedups_match_the_simulated_measurement(family, monkeypatch):
    model = tiny_vit(**FAMILIES[family])
    cpu = torch.device("cpu")
    with simulated_device(monkeypatch):
        table = calibrate_latency(model, cpu, 4, cache_dir=Path(tempfile.mkdtemp()), multiple=8, repeats=1)
        speed = SpeedModel(model, table, multiple=8)
        schedules = [alternating_schedule(blocks, speed.grid) for blocks, _ in PLANS]
        models = {"original": model}
        models.update({str(i): compressed_variant(model, s, keep, 8).eval()
                       for i, (s, (_, keep)) in enumerate(zip(schedules, PLANS))})
        measured = measure_throughput(models, (3, 32, 32), SpeedConfig(batch_size=4, repeats=2, warmup=1), cpu)
    for i, (schedule, (_, keep)) in enumerate(zip(schedules, PLANS)):
        predicted = speed.speedup(schedule, keep)
        actual = paired_speedup(measured, str(i), "original")[0]
        assert abs(predicted / actual - 1) < 0.04, (PLANS[i], predicted, actual)
