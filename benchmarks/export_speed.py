"""Does the speedup survive export? Eager PyTorch vs ONNX Runtime, measured in one run.

For each model this compresses it to the target with zero training steps (speed does
not depend on the weights; names load random weights, directories their own), exactly
as `cait compress MODEL --target-speedup S --calib-steps 0 --finetune-steps 0`, then
exports original and compressed as `cait export --dynamic-batch` does (each file checked
against PyTorch), and times all four, eager original, eager compressed, ONNX Runtime
original and ONNX Runtime compressed, round-robin in one measure_throughput call at
each batch size (same threads for both runtimes).

    python benchmarks/export_speed.py --out benchmarks/results/export_cpu.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from cait_cli.atomic import write_text_atomic
from cait_cli.errors import run_script
from cait_cli.models.loading import load_model
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.export.onnx_export import ExportConfig, export_file
from cait_cli.pipeline.measuring.measure import (
    SpeedConfig,
    device_name,
    measure_throughput,
    paired_speedup,
)

SIDES = ("eager original", "eager compressed", "ORT original", "ORT compressed")


def weights_of(name: str) -> str:
    return "pretrained" if Path(name).expanduser().exists() else "random"


def compressed_checkpoint(name: str, target: float, folder: Path, bench_batch: Optional[int]) -> Dict:
    cfg = CompressConfig(model=name, target_speedup=target, out=folder / "compressed.cait", weights=weights_of(name),
                         calib_steps=0, finetune_steps=0, device="cpu", workers=0, bench_batch_size=bench_batch)
    return compress(cfg).report


def four_models(name: str, folder: Path) -> Dict[str, torch.nn.Module]:
    """Eager and ONNX Runtime versions of the original and of the compressed checkpoint."""
    weights, ckpt = weights_of(name), str(folder / "compressed.cait")
    ort_original, _ = export_file(ExportConfig(model=name, out=folder / "original.onnx", dynamic_batch=True,
                                               weights=weights))
    ort_compressed, _ = export_file(ExportConfig(model=ckpt, out=folder / "compressed.onnx", dynamic_batch=True))
    eager = [load_model(name, weights, require_vit=False).model, load_model(ckpt, require_vit=False).model]
    return dict(zip(SIDES, [*eager, ort_original, ort_compressed]))


def bench(name: str, target: float, batches: List[int], args: argparse.Namespace) -> List[str]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cait-export-bench-") as tmp:
        report = compressed_checkpoint(name, target, Path(tmp), args.bench_batch_size)
        plan = report["plan"]
        merges = ",".join(str(b) for b, _ in plan["schedule"]) or "none"
        models = four_models(name, Path(tmp))
        input_size = tuple(models["ORT original"].pretrained_cfg["input_size"])
        for batch in batches:
            cfg = SpeedConfig(batch_size=batch, warmup=args.warmup, repeats=args.repeats, iters_per_repeat=args.iters)
            speed = measure_throughput(models, input_size, cfg, torch.device("cpu"))
            eager = paired_speedup(speed, "eager compressed", "eager original")
            ort = paired_speedup(speed, "ORT compressed", "ORT original")
            cells = " | ".join(f"{speed[s].throughput:.1f}" for s in SIDES)
            rows.append(f"| {name} | {merges}; {plan['keep']:.0%} | {batch} | {cells} | {eager[0]:.2f}x "
                        f"({eager[1]:.2f}-{eager[2]:.2f}) | {ort[0]:.2f}x ({ort[1]:.2f}-{ort[2]:.2f}) | "
                        f"{'yes' if ort[0] >= eager[0] else 'NO'} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["examples/reference", "deit_small"])
    parser.add_argument("--target", type=float, default=1.9)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 1])
    parser.add_argument("--bench-batch-size", type=int, default=None,
                        help="batch of the compression's own landing measurements (default: cait compress's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2, help="forward passes per timed repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    import onnxruntime

    torch.set_num_threads(args.threads)
    lines = [
        f"command: python {' '.join(sys.argv)}",
        f"device: cpu ({device_name(torch.device('cpu'))}), threads: {args.threads} (PyTorch and ONNX Runtime), "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, fp32, repeats: {args.repeats} runs of "
        f"at least {args.iters} passes (and at least 0.2 s for the fastest model), img/s median; speedups: median "
        f"(min-max) of paired repeats",
        "",
        "| model | plan (merge blocks; kept channel MACs) | batch | " + " | ".join(f"{s} img/s" for s in SIDES)
        + " | eager speedup | ORT speedup | ORT >= eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models:
        lines += bench(name, args.target, args.batch_sizes, args)
    if args.out:
        write_text_atomic(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_script(main)
