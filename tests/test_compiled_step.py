"""The compiled training step: same losses as eager, no recompile per gate change, eager fallback.

The backend is aot_eager: it runs dynamo's capture and AOTAutograd's joint forward/backward graph
(what changes the numerics' order and what recompiles), without inductor's C++ code generation and
build, whose time on a shared 2-core CI machine was not measured (aot_eager alone took 12-19 s a test
here); inductor runs on the GPU (benchmarks/gpu.py) and in benchmarks/train_compile.py.
"""
from __future__ import annotations

import copy

import torch
import torch._dynamo

from cait_cli.method.atme import MergeStep
from cait_cli.pipeline.training.calibrate import apply_budget, gated_student
from cait_cli.pipeline.training.compiled import Step, compiled_graphs
from cait_cli.pipeline.training.distill import merge_axes
from cait_cli.pipeline.training.train import LogitsOnly, TrainConfig, make_optimizer
from tests.support import tiny_vit

BACKEND = "aot_eager"


def _batch(step: int):
    generator = torch.Generator().manual_seed(step)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 7, (4,), generator=generator)


def _losses(base, student, compile: bool, steps: int = 3, keep=None, warn=print, backend=BACKEND, **distill):
    cfg = TrainConfig(steps=steps, lr=1e-3, **distill)
    optimizer = make_optimizer(student, cfg)
    tokens_on = merge_axes(student) if cfg.token_weight else None  # as run_phase wraps them
    step_fn = Step(LogitsOnly(student, tokens_on).train(), base, compile=compile, warn=warn, backend=backend,
                   tokens_on=tokens_on)
    losses = []
    for step in range(steps):
        if keep is not None:
            apply_budget(student, step, steps, keep)
        losses.append(step_fn(*_batch(step), optimizer, cfg, step))
    return losses, step_fn


def _gated(base):
    return gated_student(base, [MergeStep(1, "h")], multiple=1)


def test_compiled_losses_match_eager():
    torch._dynamo.reset()
    base = tiny_vit()
    eager, _ = _losses(base, _gated(base), compile=False)
    compiled, step = _losses(base, _gated(base), compile=True)
    assert step.times.compiled and step.times.fallback is None
    assert step.times.compile_steps >= 1 and step.times.compile_seconds > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_token_distillation_compiles_to_the_same_losses():
    torch._dynamo.reset()
    base = tiny_vit()
    eager, _ = _losses(base, _gated(base), compile=False, keep=0.5, distill="both", token_weight=0.5)
    compiled, step = _losses(base, _gated(base), compile=True, keep=0.5, distill="both", token_weight=0.5)
    assert step.times.compiled and step.times.fallback is None
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_changing_gate_mask_does_not_recompile_every_step():
    torch._dynamo.reset()
    base = tiny_vit()
    student = _gated(base)
    before = compiled_graphs()
    _, step = _losses(base, student, compile=True, steps=6, keep=0.4)  # the kept counts fall at every step
    # the first graphs, one recompile with the counts symbolic; not one per step (6 steps, 2 models)
    assert compiled_graphs() - before <= 4
    assert step.times.compiled


def test_compile_failure_falls_back_eagerly_with_one_line():
    torch._dynamo.reset()

    def broken(graph, inputs):
        raise RuntimeError("no compiler here")

    base = tiny_vit()
    said = []
    losses, step = _losses(base, _gated(base), compile=True, warn=said.append, backend=broken)
    eager, _ = _losses(base, _gated(base), compile=False)
    assert len(said) == 1 and "training runs eagerly" in said[0] and "no compiler here" in said[0]
    assert not step.times.compiled and step.times.fallback
    torch.testing.assert_close(losses, eager)


def test_step_times_report_compile_apart():
    torch._dynamo.reset()
    base = tiny_vit()
    _, step = _losses(base, copy.deepcopy(base), compile=True, steps=3)
    report = step.times.to_dict()
    assert report["compiled"] and report["compile_steps"] >= 1
    assert report["timed_steps"] == 3 - report["compile_steps"]
