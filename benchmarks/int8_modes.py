"""Static (calibrated QDQ) or dynamic int8 on top of CAIT: which runs faster under ONNX Runtime here?

Exports the fp32 original (DeiT-S, random weights) and a CAIT checkpoint of it (dynamic batch),
quantizes the CAIT file both ways with `cait export`'s own quantizer and settings (static:
calibrated on 128 images of the bundled Fashion-MNIST subset), also the original dynamically, and
times all five interleaved at batch 16 and 1 (median of paired ratios, min-max of the repeats).
Speed only: accuracy of the static file is in int8_cpu.md.

    python -m benchmarks.int8_modes /work/ckpt/speed/1.9.cait --out benchmarks/results/int8_modes_cpu.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict

import torch

from benchmarks import harness
from cait_cli.models.onnx_model import load_onnx
from cait_cli.pipeline.export import quantize as int8
from cait_cli.pipeline.export.onnx_export import ExportConfig, export_file
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup

RATIOS = (("CAIT static", "CAIT fp32"), ("CAIT dynamic", "CAIT fp32"), ("CAIT dynamic", "CAIT static"))


def files(args: argparse.Namespace, tmp: Path) -> Dict[str, torch.nn.Module]:
    original, _ = export_file(ExportConfig(model=args.model, out=tmp / "original.onnx", dynamic_batch=True,
                                           weights="random"))
    cait, _ = export_file(ExportConfig(model=args.cait, out=tmp / "cait.onnx", dynamic_batch=True))
    images = int8.int8_images(args.calib_data, cait.pretrained_cfg, calib_images=128, compare_images=1,
                              num_classes=cait.num_classes)
    settings = int8.Int8Settings()
    int8.quantize_file(cait.path, tmp / "static.onnx", images.calibration, settings)
    int8.quantize_file(cait.path, tmp / "dynamic.onnx", None, settings)
    int8.quantize_file(original.path, tmp / "original_dynamic.onnx", None, settings)
    return {"original fp32": original, "CAIT fp32": cait, "CAIT static": load_onnx(tmp / "static.onnx"),
            "CAIT dynamic": load_onnx(tmp / "dynamic.onnx"),
            "original dynamic": load_onnx(tmp / "original_dynamic.onnx")}


def add_rows(speeds: harness.Table, ratios: harness.Table, models: Dict[str, torch.nn.Module], batch: int,
             repeats: int) -> str:
    """The rows of one batch size; its headline figure (dynamic over static)."""
    speed = measure_throughput(models, (3, 224, 224), SpeedConfig(batch_size=batch, warmup=2, repeats=repeats),
                               torch.device("cpu"))
    for name in models:
        speeds.add(batch, name, f"{speed[name].throughput:.1f}",
                   "{:.2f}x ({:.2f}-{:.2f})".format(*paired_speedup(speed, name, "original fp32")))
    for a, b in RATIOS:
        ratios.add(batch, f"{a} / {b}", "{:.2f}x ({:.2f}-{:.2f})".format(*paired_speedup(speed, a, b)))
    return f"batch {batch}: dynamic / static {paired_speedup(speed, 'CAIT dynamic', 'CAIT static')[0]:.2f}x"


def main() -> None:
    parser = harness.make_parser(__doc__, "calib_data", "out", model="deit_small", repeats=11)
    parser.add_argument("cait", help="a CAIT checkpoint of --model (e.g. compress_speed.py --keep's 1.9.cait)")
    args = parser.parse_args()
    speeds = harness.Table("batch", "model", "img/s", "vs original fp32")
    ratios = harness.Table("batch", "ratio", "median (min-max) of paired repeats")
    with tempfile.TemporaryDirectory(prefix="cait-int8-modes-") as tmp:
        models = files(args, Path(tmp))
        figures = [add_rows(speeds, ratios, models, batch, args.repeats) for batch in (16, 1)]
    harness.write_results(args.out, "Static (calibrated QDQ) or dynamic int8 on top of CAIT under ONNX Runtime",
                          [*speeds.lines, "", *ratios.lines], headline="; ".join(figures))


if __name__ == "__main__":
    harness.run_script(main)
