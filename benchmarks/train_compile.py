"""Eager vs torch.compile training step on the CPU: decides compress's CPU default (`compile`).

For a tiny ViT and a DeiT-T-sized one (random weights), compress's fine-tuning step
(compiled.Step on a merged, 70%-kept student) eagerly and compiled, side by side: images/s
after the warm-up steps, compile time apart, and the compiled/eager ratio. Run it on a quiet
machine; compile stays off on the CPU unless the ratio is clearly above 1 for both sizes.

    OMP_NUM_THREADS=8 python -m benchmarks.train_compile --out benchmarks/results/train_compile_cpu.md
    python -m benchmarks.train_compile --sizes tiny --batch-size 2 --steps 1 --warmup 1   # smoke test only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks.profile_step import setup
from cait_cli.atomic import write_text_atomic
from cait_cli.errors import run_script
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


def row(size: str, args) -> str:
    eager, compiled = rate(SIZES[size], args, False), rate(SIZES[size], args, True)
    note = "" if compiled["compiled"] else " (compile failed: eager)"
    return (f"| {size} | {args.batch_size} | {eager['rate']:.1f} | {compiled['rate']:.1f}{note} | "
            f"{compiled['rate'] / eager['rate']:.2f}x | {compiled['compile']:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=64, help="compress's CPU default")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling happens here)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines: List[str] = [f"command: python -m benchmarks.train_compile {' '.join(sys.argv[1:])}", "",
                        f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}", "",
                        "| model | batch | eager img/s | compiled img/s | compiled/eager | compile time |",
                        "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for size in args.sizes:
        lines.append(row(size, args))
        print(lines[-1], flush=True)
    if args.out:
        write_text_atomic(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_script(main)
