"""A simulated device: a clock that advances by the work torch ops do, not by wall time.

Planner tests need timings that are exact and repeatable, yet behave like a real device in
the ways that make latency models go wrong: every op costs a fixed launch overhead whatever
its size (framework overhead that does not scale with tokens or channels), every element
written costs memory traffic, and multiply-adds cost compute. Inside `simulated_device()`,
`time.perf_counter` as read by the measuring and planning modules returns this clock, so the
latency table, the whole-model fit and every throughput measurement see the same device.
"""
from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

TIMED_MODULES = ("cait_cli.pipeline.measuring.measure", "cait_cli.pipeline.planning.latency")


@dataclass
class Costs:
    """Seconds per op launched, per element written, per floating-point operation: a slow device,
    so a tiny ViT's forward outlasts a measurement's minimum run and is timed once per repeat."""

    per_op: float = 1e-3
    per_element: float = 2e-8
    per_flop: float = 2.5e-9


class _Clock(TorchDispatchMode):
    def __init__(self, costs: Costs) -> None:
        super().__init__()
        self.costs, self.now = costs, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.now += self.costs.per_op + self.costs.per_element * _elements(out)
        self.now += self.costs.per_flop * _flops(func, args, kwargs, out)
        return out


def _elements(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return sum(_elements(o) for o in out)
    return 0


def _flops(func, args, kwargs, out) -> int:
    packet = func._overloadpacket
    if packet in flop_registry:
        return flop_registry[packet](*args, **kwargs, out_val=out)
    if "scaled_dot_product" in packet.__name__ or "flash_attention" in packet.__name__:
        q, k = args[0], args[1]  # (B, h, N, d), (B, h, M, d): q k^T and (attn) v
        return 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
    return 0


@contextlib.contextmanager
def simulated_device(monkeypatch: pytest.MonkeyPatch, costs: Costs = Costs()) -> Iterator[_Clock]:
    """Time every measurement on the simulated device (CPU tensors, simulated clock)."""
    clock = _Clock(costs)
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock.now)
    for module in TIMED_MODULES:
        monkeypatch.setattr(f"{module}.time", fake_time)
    with clock:
        yield clock
