"""CAIT on a GPU: original vs compressed throughput, training images/s, peak memory.

For DeiT-T/S/B with random weights (speed does not depend on them):
  1. `cait compress` at targets 1.5/1.9/2.5 with no training: the exported model's
     throughput against the original (batch 256, bf16 autocast, interleaved), eagerly and
     replayed from CUDA graphs (GPU work alone, without the host's per-op launch cost);
  2. training images/s: the fine-tuning step alone (a batch already on the device, compress's
     step on a slimmed student) eager and under torch.compile (compile time apart), then CDCP
     calibration and fine-tuning through compress's own loop from pre-made tensors (collated by
     the main process) and from a generated folder of 500x375 JPEGs decoded by --workers
     processes or on the GPU (--decode gpu), with peak GPU memory and the fraction of the GPU's
     peak bf16 FLOP/s. The gaps say what holds the GPU back: the loop (step alone vs pre-made) or
     the input (pre-made vs JPEG).

    python -m benchmarks.gpu --out benchmarks/results/gpu_h100.md
    python -m benchmarks.gpu --device cpu --models deit_tiny --targets 1.5 --images 16 \\
        --batch-size 4 --steps 3 --warmup 1 --bench-batch-size 8      # smoke test of the script only
    python -m benchmarks.gpu --device cpu --parts training --models deit_tiny --images 8 --batch-size 2 \\
        --steps 2 --warmup 1 --width 64 --height 48 --compile-backend aot_eager --workers 1  # smoke: training

Without a CUDA GPU (and without --device cpu) it refuses in one line.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks import harness
from benchmarks.input_speed import make_jpeg_folder, premade_inputs, training_rates
from benchmarks.profile_step import setup
from cait_cli.errors import CaitError
from cait_cli.method.cost import model_macs
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.distributed import default_workers
from cait_cli.pipeline.evaluate import EvalConfig, evaluate
from cait_cli.pipeline.measuring.measure import synchronize
from cait_cli.pipeline.training.compiled import Step
from cait_cli.pipeline.training.train import TrainConfig, make_optimizer


def peak_mb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else float("nan")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def speed_rows(model: str, targets: List[float], args, tmp: Path, table: harness.Table) -> List[str]:
    """Rows of the speed table for one model; the headline figures ("deit_small 1.9x: 1.94x")."""
    figures = []
    for target in targets:
        cfg = CompressConfig(model=model, target_speedup=target, out=tmp / f"{model}-{target}.cait",
                             weights="random", calib_steps=0, finetune_steps=0, device=args.device,
                             bench_batch_size=args.bench_batch_size, latency_cache=tmp / "latency",
                             runtime=args.runtime)
        start = time.perf_counter()
        try:
            report = compress(cfg).report
        except CaitError as err:  # e.g. a target beyond this model on this device: say so, go on
            table.add(model, f"{target:g}x", f"refused: {err}")
            continue
        wall = time.perf_counter() - start
        low, high = report["measured_speedup_range"]
        ratio = report["measured_speedup"]
        spread = max(ratio / low - 1, high / ratio - 1)
        base, comp = report["baseline"], report["compressed"]
        table.add(model, f"{target:g}x", report["runtime"], f"{base['throughput']:.0f}", f"{comp['throughput']:.0f}",
                  f"{ratio:.2f}x ({low:.2f}-{high:.2f})", f"+-{spread:.0%}", "yes" if report["landed"] else "NO",
                  harness.landing_cell(report), f"{wall:.0f} s", *(cross_speedup(cfg, rt, args) for rt in args.cross))
        figures.append(f"{model} {target:g}x: {ratio:.2f}x")
    return figures


def cross_speedup(cfg: CompressConfig, runtime: str, args) -> str:
    """The written checkpoint against the original under another runtime (compile, TensorRT)."""
    try:
        report = evaluate(EvalConfig(model=str(cfg.out), baseline=cfg.model, weights="random", device=args.device,
                                     batch_size=args.bench_batch_size, runtime=runtime, workers=0))
    except CaitError as err:
        return f"failed: {err}"
    low, high = report["speedup_range"]
    return f"{report['speedup']:.2f}x ({low:.2f}-{high:.2f})"


PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense bf16, SXM


def peak_tflops(args) -> float:
    """The GPU's dense bf16 peak (--peak-tflops, else by name; NaN when unknown)."""
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else ""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


def train_flops(base, student) -> float:
    """FLOPs of one image's step: the teacher's forward, the student's forward and backward (2x)."""
    inner = getattr(student, "model", student)
    return 2.0 * (model_macs(base) + 3 * model_macs(inner))


def step_alone(model: str, args, compile: bool) -> Dict[str, float]:
    """compress's fine-tuning step (compiled.Step) on a batch already on the device: images/s after the
    warm-up steps, the compile time (steps that compiled), peak memory and the fraction of peak FLOP/s."""
    device = torch.device(args.device)
    reset_peak(args.device)
    base, student, images, labels = setup(model, args.batch_size, device, merge=True, keep=0.7)
    cfg = TrainConfig(steps=args.steps + args.warmup, amp=True)
    optimizer = make_optimizer(student, cfg)
    step = Step(student, base, compile=compile, backend=args.compile_backend)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        step(images, labels, optimizer, cfg, i)
    synchronize(device)
    rate = args.steps * args.batch_size / (time.perf_counter() - start)
    return {"rate": rate, "compile": step.times.compile_seconds, "peak": peak_mb(args.device),
            "flops": rate * train_flops(base, student) / (peak_tflops(args) * 1e12), "compiled": step.times.compiled}


def training_rows(model: str, data: str, args, table: harness.Table) -> List[str]:
    """Rows of the training table for one model; the headline figure (the loop's fine-tuning rate from JPEGs)."""
    for compile in (False, True):
        got = step_alone(model, args, compile)
        mode = "compiled" if got["compiled"] else ("eager" if not compile else "eager (compile failed)")
        table.add(model, f"step alone, batch on the device, {mode}", "", f"{got['rate']:.0f}",
                  f"{got['compile']:.0f} s", f"{got['peak']:.0f}", f"{got['flops']:.1%}")
    # a plan that prunes (keep 0.7), so calibration runs
    run = dict(steps=args.steps, batch=args.batch_size, warmup=args.warmup, device=args.device,
               calib_steps=args.steps, keep=0.7)
    inputs = (("loop, pre-made tensors, main process", 0, "cpu"),
              (f"loop, {args.width}x{args.height} JPEGs, {args.workers} workers decode", args.workers, "cpu"),
              (f"loop, {args.width}x{args.height} JPEGs, decoded on the GPU", args.workers, "gpu"))
    for label, workers, decode in inputs:
        reset_peak(args.device)
        images = premade_inputs(args.images, 224) if workers == 0 else data
        rates = training_rates(model, images, workers=workers, decode=decode, **run)
        table.add(model, label, f"{rates.get('calibrate', float('nan')):.0f}",
                  f"{rates.get('finetune', float('nan')):.0f}", "", f"{peak_mb(args.device):.0f}", "")
    return [f"{model} fine-tuning {rates.get('finetune', float('nan')):.0f} img/s (JPEGs, decoded on the GPU)"]


def main() -> None:
    parser = harness.make_parser(
        __doc__, "targets", "runtime", "out", models=["deit_tiny", "deit_small", "deit_base"], device="cuda",
        bench_batch=256, train_batch=harness.Default(256, "training batch (compress's CUDA default)"),
        timed_steps=harness.Default(40, "timed training steps per phase"), warmup=10, workers=default_workers())
    parser.add_argument("--cases", nargs="+", default=None, help="MODEL:TARGET pairs for the speed table "
                        "(instead of every model at every target)")
    parser.add_argument("--cross", nargs="*", default=["compile", "tensorrt"],
                        help="runtimes the landed checkpoint is measured under too")
    parser.add_argument("--images", type=int, default=4096, help="generated JPEGs (--width x --height)")
    parser.add_argument("--width", type=int, default=500, help="of the generated JPEGs (ImageNet's typical 500x375)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--compile-backend", default="inductor", help="of the compiled step alone "
                        "(aot_eager: a quick CPU smoke test)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (None: by its name)")
    parser.add_argument("--parts", nargs="+", choices=["speed", "training"], default=["speed", "training"],
                        help="which tables to measure (one call each fits a short GPU lease better)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CaitError("benchmarks/gpu.py measures on a CUDA GPU and none is available here "
                        "(--device cpu only smoke-tests the script)")

    body, figures = ["Random weights (speed does not depend on them)."], []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "speed" in args.parts:
            figures += speed_table(args, tmp, body)
        if "training" in args.parts:
            figures += training_table(args, tmp, body)
    harness.write_results(args.out, "CAIT on a GPU: original vs compressed throughput, training images/s, peak "
                          "memory", body, headline="; ".join(figures), device=args.device)


# the baseline's own images/s, to be read beside "original img/s" (timm's published inference figures)
TIMM_REFERENCE = ("timm's published DeiT-S inference (AMP + torch.compile, batch 256): 9.8k img/s on an RTX 4090, "
                  "14.6k on an RTX Pro 6000; cait v0.2's H200 record: 19.3k eager (gpu_h200.md).")


def speed_table(args, tmp: Path, body: List[str]) -> List[str]:
    """The speed table, added to `body`; its headline figures."""
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    body += ["", f"Compressed vs original (batch {args.bench_batch_size}, {precision}, interleaved):", ""]
    print(body[-2], flush=True)
    body += [TIMM_REFERENCE, ""]  # a speedup over a slow baseline is not one a user gets
    table = harness.Table("model", "target", "runtime", "original img/s", "compressed img/s", "measured (repeats)",
                          "repeat spread", "in band", "landing", "compress wall",
                          *(f"measured under {rt}" for rt in args.cross), echo=True)
    cases = [c.split(":") for c in args.cases] if args.cases else [(m, t) for m in args.models for t in args.targets]
    figures = [figure for model, target in cases for figure in speed_rows(model, [float(target)], args, tmp, table)]
    body += table.lines
    return figures


def training_table(args, tmp: Path, body: List[str]) -> List[str]:
    """The training table, added to `body`; its headline figures."""
    data = str(make_jpeg_folder(tmp / "jpegs", args.images, size=args.height, width=args.width))
    body += ["", f"Training images/s (batch {args.batch_size} per step, bf16, {args.steps} steps timed after "
             f"{args.warmup}; the loop compiles the step on CUDA; peak FLOP/s {peak_tflops(args):g} TFLOP/s):", ""]
    print(body[-2], flush=True)
    table = harness.Table("model", "input", "calibration img/s", "fine-tuning img/s", "compile", "peak MB",
                          "of peak FLOP/s", echo=True)
    figures = [figure for model in args.models for figure in training_rows(model, data, args, table)]
    body += table.lines
    return figures


if __name__ == "__main__":
    harness.run_script(main)
