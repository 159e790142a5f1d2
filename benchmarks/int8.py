"""int8 on top of CAIT under ONNX Runtime: speed of DeiT-S, accuracy of the Fashion-MNIST reference.

Speed and accuracy (writes int8_cpu.md; time it with nothing else running):

    cait compress deit_small --weights random --target-speedup 1.9 --calib-steps 0 --finetune-steps 0 \
        --workers 0 --out /tmp/deit_small_1.9.cait
    cait compress examples/reference_converged --data examples/fashion_mnist --target-speedup 1.9 \
        --calib-steps 50 --finetune-steps 150 --workers 0 --out /tmp/reference_1.9.cait
    python -m benchmarks.int8 --cait /tmp/deit_small_1.9.cait --cait-reference /tmp/reference_1.9.cait \
        --out benchmarks/results/int8_cpu.md

(1) speed: DeiT-S (random weights) fp32, its int8, CAIT at 1.9x (--cait) fp32 and int8, all
exported with a dynamic batch as `cait export --dynamic-batch [--quantize int8]` does and timed
round-robin in one measure_throughput call at each batch size; the ratios are paired.
(2) accuracy: the reference and its CAIT version (--cait-reference), fp32 and int8, top-1 on the
10,000 Fashion-MNIST test images (Debian's dataset-fashion-mnist), and their speed.

int8 files are made by `export` itself (static QDQ, calibrated on --calib-data's train/ split,
checked on its val/ split). DeiT-S's random weights have no accuracy to keep, so its files are
made with --max-drop 100 (speed only).

Which layers stay in fp32 (accuracy only, not timing-sensitive; writes int8_layers_cpu.md):

    python -m benchmarks.int8 --layers --out benchmarks/results/int8_layers_cpu.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks import harness  # noqa: E402
from benchmarks.fashion_mnist import DEBIAN_FASHION_MNIST, load_fashion_mnist  # noqa: E402
from cait_cli.models.onnx_model import OnnxModel, load_onnx  # noqa: E402
from cait_cli.pipeline.data.sources import eval_transform  # noqa: E402
from cait_cli.pipeline.export import quantize as int8  # noqa: E402
from cait_cli.pipeline.export.onnx_export import ExportConfig, export, export_file  # noqa: E402
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup  # noqa: E402

SIDES = ("original fp32", "original int8", "CAIT fp32", "CAIT int8")
RATIOS = (("CAIT int8", "original fp32"), ("CAIT fp32", "original fp32"), ("CAIT int8", "CAIT fp32"),
          ("original int8", "original fp32"))
# keep_fp32 settings compared for the layer choice (None: dynamic quantization, the library's default list)
VARIANTS: Tuple[Tuple[str, Optional[Tuple[str, ...]]], ...] = (
    ("static, all int8", ()),
    ("static, keep patch_embed, head", ("patch_embed", "head")),
    ("static, keep LayerNormalization", ("LayerNormalization",)),
    ("static, keep patch_embed, head, LayerNormalization", ("patch_embed", "head", "LayerNormalization")),
    ("static, keep patch_embed, head, LayerNormalization, attention",
     ("patch_embed", "head", "LayerNormalization", "attention")),
    ("dynamic, keep patch_embed, head", None),
)


def fashion_test(data_cfg: Dict, limit: Optional[int], batch: int = 250) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST's test images, preprocessed as the model expects, in batches."""
    images, labels = load_fashion_mnist(DEBIAN_FASHION_MNIST, "test")
    count = min(limit or len(labels), len(labels))
    transform = eval_transform(data_cfg)
    tensors = torch.stack([transform(Image.fromarray(images[i], mode="L").convert("RGB")) for i in range(count)])
    targets = torch.from_numpy(labels[:count])
    return list(zip(tensors.split(batch), targets.split(batch)))


def top1(models: Dict[str, torch.nn.Module], test: Sequence) -> Dict[str, float]:
    preds, labels = int8.predictions(models, test)
    return {name: float((p == labels).float().mean()) for name, p in preds.items()}


def four_files(original: str, cait: str, folder: Path, args: argparse.Namespace, weights: str,
               max_drop: float, batch: int, fp32_files: Dict[Tuple[str, str], OnnxModel]
               ) -> Tuple[Dict[str, OnnxModel], str]:
    """fp32 and int8 files of the original and of its CAIT version (dynamic batch); each int8 file is
    `export`'s choice (the auto method: static and dynamic both checked, the faster at `batch` written);
    with the methods chosen, "original/CAIT". fp32 files, the same at every batch, are exported once
    into `fp32_files` (by model and weights)."""
    files: Dict[str, OnnxModel] = {}
    methods: List[str] = []
    for label, name in (("original", original), ("CAIT", cait)):
        if (name, weights) not in fp32_files:
            fp32_files[name, weights], _ = export_file(ExportConfig(model=name, out=folder / f"{label}.onnx",
                                                                    dynamic_batch=True, weights=weights))
        fp32 = fp32_files[name, weights]
        common = dict(model=name, dynamic_batch=True, weights=weights, data=args.calib_data, max_drop=max_drop,
                      calib_images=args.calib_images, repeats=1, warmup=0, bench_batch_size=batch)
        report = export(ExportConfig(out=folder / f"{label}.int8.onnx", quantize="int8", **common))
        check = report["quantize"]
        print(f"{label} int8 ({check['method']}): {check['checked_by']} drop {check.get('drop', 0):.2f} pt "
              f"on {check.get('images', 'random images')}", flush=True)
        files[f"{label} fp32"], files[f"{label} int8"] = fp32, load_onnx(report["out"])
        methods.append(check["method"])
    return {side: files[side] for side in SIDES}, "/".join(methods)


def speed_row(table: harness.Table, name: str, made: Tuple[Dict[str, OnnxModel], str], batch: int,
              args: argparse.Namespace) -> str:
    """One row of the speed table; its headline figure (CAIT int8 over the original fp32)."""
    models, methods = made
    input_size = tuple(models["original fp32"].pretrained_cfg["input_size"])
    cfg = SpeedConfig(batch_size=batch, warmup=args.warmup, repeats=args.repeats, iters_per_repeat=args.iters)
    speed = measure_throughput(models, input_size, cfg, torch.device("cpu"))
    ratios = [paired_speedup(speed, a, b) for a, b in RATIOS]
    table.add(name, batch, methods, *(f"{speed[s].throughput:.1f}" for s in SIDES),
              *("{:.2f}x ({:.2f}-{:.2f})".format(*ratio) for ratio in ratios))
    return f"{name.split(' ')[0]} batch {batch} CAIT int8 {ratios[0][0]:.2f}x"


def speed_table() -> harness.Table:
    return harness.Table("model", "batch", "int8 method (original/CAIT)", *(f"{s} img/s" for s in SIDES),
                         *(f"{a} / {b}" for a, b in RATIOS), echo=True)


def cait_for(batch: int, args: argparse.Namespace) -> str:
    """The DeiT-S checkpoint served at `batch`: --cait, or --cait-batch1 (planned for batch 1) at batch 1."""
    return args.cait_batch1 if batch == 1 and args.cait_batch1 else args.cait


def benchmark(args: argparse.Namespace, folder: Path) -> Tuple[List[str], str]:
    """The speed and accuracy tables; the headline."""
    table, figures = speed_table(), []
    fp32_files: Dict[Tuple[str, str], OnnxModel] = {}
    for batch in args.batch_sizes:
        deit = four_files(args.model, cait_for(batch, args), folder / f"deit{batch}", args, "random", 100.0, batch,
                          fp32_files)
        figures.append(speed_row(table, f"{args.model} (random weights) -> {cait_for(batch, args)}", deit, batch,
                                 args))
    for batch in args.batch_sizes:
        reference = four_files(args.reference, args.cait_reference, folder / f"reference{batch}", args,
                               "pretrained", args.max_drop, batch, fp32_files)
        speed_row(table, args.reference, reference, batch, args)
    models, methods = reference  # the files raced at the last batch size
    test = fashion_test(models["original fp32"].pretrained_cfg, args.limit)
    accuracy = top1(models, test)
    accuracy_table = harness.Table("model", *SIDES, "CAIT int8 - CAIT fp32")
    accuracy_table.add(args.reference, *(f"{100 * accuracy[s]:.2f}%" for s in SIDES),
                       f"{100 * (accuracy['CAIT int8'] - accuracy['CAIT fp32']):+.2f} pt")
    lines = ["## Speed under ONNX Runtime (median img/s; ratios: median (min-max) of paired repeats)", "",
             *table.lines, "", f"## Top-1 on {sum(len(b[1]) for b in test)} Fashion-MNIST test images (int8 methods, "
             f"original/CAIT: {methods}, as chosen at batch {args.batch_sizes[-1]})", "", *accuracy_table.lines]
    figures.append(f"top-1 CAIT int8 {100 * accuracy['CAIT int8']:.2f}% vs fp32 {100 * accuracy['CAIT fp32']:.2f}%")
    return lines, "; ".join(figures)


def layer_rows(table: harness.Table, name: str, folder: Path, args: argparse.Namespace) -> Dict[str, float]:
    """top-1 on the test images of each keep_fp32 variant of `name`'s int8 file, as rows and by variant."""
    fp32, _ = export_file(ExportConfig(model=name, out=folder / "fp32.onnx", dynamic_batch=True))
    data_cfg = fp32.pretrained_cfg
    images = int8.int8_images(args.calib_data, data_cfg, calib_images=args.calib_images, compare_images=1,
                              num_classes=fp32.num_classes)
    test = fashion_test(data_cfg, args.limit)
    models: Dict[str, torch.nn.Module] = {"fp32": fp32}
    for label, keep in VARIANTS:
        path = folder / f"{len(models)}.onnx"
        settings = int8.Int8Settings(keep_fp32=keep if keep is not None else ("patch_embed", "head"))
        int8.quantize_file(fp32.path, path, images.calibration if keep is not None else None, settings)
        models[label] = load_onnx(path)
    preds, labels = int8.predictions(models, test)
    scores = {}
    for label, p in preds.items():
        scores[label] = float((p == labels).float().mean())
        agreement = float((p == preds["fp32"]).float().mean())
        table.add(name, label, f"{100 * scores[label]:.2f}%", f"{100 * agreement:.2f}%",
                  f"{models[label].path.stat().st_size / 2**20:.2f}")
    return scores


def layers(args: argparse.Namespace, folder: Path) -> Tuple[List[str], str]:
    """The table of layer choices; the headline (each model's fp32 top-1 and its int8 variants' range)."""
    table, figures = harness.Table("model", "int8 variant", "top-1", "agreement with fp32", "file MB", echo=True), []
    for i, name in enumerate([args.reference] + ([args.cait_reference] if args.cait_reference else [])):
        scores = layer_rows(table, name, folder / str(i), args)
        fp32 = scores.pop("fp32")
        figures.append(f"{name} fp32 {100 * fp32:.2f}%, int8 {harness.spread(scores.values(), '{:.2%}')}")
    lines = [f"Calibration: {args.calib_images} images of {args.calib_data}/train; test: Fashion-MNIST test "
             f"images ({args.limit or 10000}).", "", *table.lines]
    return lines, "; ".join(figures)


def main() -> None:
    parser = harness.make_parser(__doc__, "calib_data", "iters", "warmup", "threads", "out", repeats=7,
                                 model=harness.Default("deit_small", "the speed model (random weights)"),
                                 reference="examples/reference_converged")
    parser.add_argument("--layers", action="store_true", help="compare which layers stay fp32 (accuracy only)")
    parser.add_argument("--cait", help="its compressed checkpoint (cait compress ... --target-speedup 1.9)")
    parser.add_argument("--cait-batch1", help="DeiT-S compressed for batch-1 serving (--runtime onnxruntime "
                        "--bench-batch-size 1), timed at batch 1 in place of --cait")
    parser.add_argument("--cait-reference", help="the reference's compressed checkpoint (fine-tuned)")
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--max-drop", type=float, default=1.0, help="of the reference's int8 files")
    parser.add_argument("--limit", type=int, default=None, help="test images (None: all 10,000)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 1])
    args = parser.parse_args()
    if not args.layers and not (args.cait and args.cait_reference):
        parser.error("the benchmark needs --cait and --cait-reference (or --layers)")

    import onnxruntime  # noqa: F401  (its version goes into the header)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cait-int8-bench-") as tmp:
        body, headline = (layers if args.layers else benchmark)(args, Path(tmp))
    title = ("int8 on top of CAIT: which layers stay in fp32" if args.layers else
             "int8 on top of CAIT under ONNX Runtime: speed of DeiT-S, accuracy of the Fashion-MNIST reference")
    harness.write_results(args.out, title, [f"Threads: {args.threads} (PyTorch and ONNX Runtime).", "", *body],
                          headline=headline)


if __name__ == "__main__":
    harness.run_script(main)
