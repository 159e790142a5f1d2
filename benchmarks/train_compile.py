"""Eager vs torch.compile training step on the CPU: decides compress's CPU default (`compile`).

For a tiny ViT and a DeiT-T-sized one (random weights), compress's fine-tuning step
(compiled.Step on a merged, 70%-kept student) eagerly and compiled, side by side: images/s
after the warm-up steps, compile time apart, and the compiled/eager ratio. Run it on a quiet
machine; compile stays off on the CPU unless the ratio is clearly above 1 for both sizes.

    OMP_NUM_THREADS=8 python -m benchmarks.train_compile --out benchmarks/results/train_compile_cpu.md
    python -m benchmarks.train_compile --sizes tiny --batch-size 2 --steps 1 --warmup 1   # smoke test only
"""
from __future__ import annotations

import time
from typing import Dict

import torch

from benchmarks import harness
from benchmarks.profile_step import setup
from cait_cli.pipeline.training.compiled import Step
from cait_cli.pipeline.training.train import TrainConfig, make_optimizer

SIZES = {"tiny": "test_vit", "deit_t": "deit_tiny_patch16_224"}  # timm names; test_vit: timm's 160px test ViT


def rate(model: str, args, compile: bool) -> Dict[str, float]:
    """Images/s of the step after args.warmup steps (which include compiling), and the compile time."""
    base, student, images, labels = setup(model, args.batch_size, torch.device("cpu"), merge=True, keep=0.7)
    cfg = TrainConfig(steps=args.warmup + args.steps)
    optimizer = make_optimizer(student, cfg)
    step = Step(student, base, compile=compile, backend=args.backend)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        step(images, labels, optimizer, cfg, i)
    seconds = time.perf_counter() - start
    return {"rate": args.steps * args.batch_size / seconds, "compile": step.times.compile_seconds,
            "compiled": step.times.compiled}


def add_row(table: harness.Table, size: str, args) -> float:
    """Eager and compiled at one size; the compiled/eager ratio."""
    eager, compiled = rate(SIZES[size], args, False), rate(SIZES[size], args, True)
    note = "" if compiled["compiled"] else " (compile failed: eager)"
    table.add(size, args.batch_size, f"{eager['rate']:.1f}", f"{compiled['rate']:.1f}{note}",
              f"{compiled['rate'] / eager['rate']:.2f}x", f"{compiled['compile']:.0f} s")
    return compiled["rate"] / eager["rate"]


def main() -> None:
    parser = harness.make_parser(__doc__, "out", train_batch=harness.Default(64, "compress's CPU default"),
                                 timed_steps=10, warmup=harness.Default(3, "untimed steps first (compiling happens "
                                                                           "here)"))
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    table = harness.Table("model", "batch", "eager img/s", "compiled img/s", "compiled/eager", "compile time",
                          echo=True)
    ratios = [f"{size} {add_row(table, size, args):.2f}x" for size in args.sizes]
    harness.write_results(args.out, "Eager vs torch.compile training step on the CPU", [f"Backend {args.backend}.", "",
                          *table.lines], headline="compiled/eager: " + ", ".join(ratios))


if __name__ == "__main__":
    harness.run_script(main)
