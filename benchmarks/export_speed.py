"""Does the speedup survive export? Eager PyTorch vs ONNX Runtime, measured in one run.

For each model this compresses it to the target with zero training steps (speed does
not depend on the weights; names load random weights, directories their own), exactly
as `cait compress MODEL --target-speedup S --calib-steps 0 --finetune-steps 0`, then
exports original and compressed as `cait export --dynamic-batch` does (each file checked
against PyTorch), and times all four, eager original, eager compressed, ONNX Runtime
original and ONNX Runtime compressed, round-robin in one measure_throughput call at
each batch size (same threads for both runtimes).

    python -m benchmarks.export_speed --out benchmarks/results/export_cpu.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from benchmarks import harness
from cait_cli.models.loading import load_model
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.export.onnx_export import ExportConfig, export_file
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup

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


def bench(name: str, target: float, batches: List[int], args: argparse.Namespace, table: harness.Table) -> List[str]:
    """Rows of `table` for one model at each batch size; the headline figures (eager and ORT speedups)."""
    figures = []
    with tempfile.TemporaryDirectory(prefix="cait-export-bench-") as tmp:
        report = compressed_checkpoint(name, target, Path(tmp), args.bench_batch_size)
        models = four_models(name, Path(tmp))
        input_size = tuple(models["ORT original"].pretrained_cfg["input_size"])
        for batch in batches:
            cfg = SpeedConfig(batch_size=batch, warmup=args.warmup, repeats=args.repeats, iters_per_repeat=args.iters)
            speed = measure_throughput(models, input_size, cfg, torch.device("cpu"))
            eager = paired_speedup(speed, "eager compressed", "eager original")
            ort = paired_speedup(speed, "ORT compressed", "ORT original")
            table.add(name, harness.plan_cell(report), batch,
                      *(f"{speed[s].throughput:.1f}" for s in SIDES),
                      f"{eager[0]:.2f}x ({eager[1]:.2f}-{eager[2]:.2f})", f"{ort[0]:.2f}x ({ort[1]:.2f}-{ort[2]:.2f})",
                      "yes" if ort[0] >= eager[0] else "NO")
            figures.append(f"{name} batch {batch} {eager[0]:.2f}x eager / {ort[0]:.2f}x ORT")
    return figures


def main() -> None:
    parser = harness.make_parser(__doc__, "target", "iters", "warmup", "threads", "out",
                                 models=["examples/reference", "deit_small"], repeats=7,
                                 bench_batch=harness.Default(None, "batch of the compression's own landing "
                                                                   "measurements (None: cait compress's)"))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 1])
    args = parser.parse_args()

    import onnxruntime  # noqa: F401  (its version goes into the header)

    torch.set_num_threads(args.threads)
    table = harness.Table("model", "plan (merge blocks; kept channel MACs)", "batch", *(f"{s} img/s" for s in SIDES),
                          "eager speedup", "ORT speedup", "ORT >= eager", echo=True)
    figures = [figure for name in args.models for figure in bench(name, args.target, args.batch_sizes, args, table)]
    body = [f"Threads: {args.threads} (PyTorch and ONNX Runtime), fp32, repeats: {args.repeats} runs of at least "
            f"{args.iters} passes (and at least 0.2 s for the fastest model), img/s median; speedups: median "
            "(min-max) of paired repeats.", "", *table.lines]
    harness.write_results(args.out, "Does the speedup survive export? Eager PyTorch vs ONNX Runtime", body,
                          headline="; ".join(figures))


if __name__ == "__main__":
    harness.run_script(main)
