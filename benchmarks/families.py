"""The ViT families people use now, compressed on this device: does each land, reload, give dense
maps and export?

For every model and target this runs `cait compress MODEL --weights random --target-speedup S
--calib-steps 0 --finetune-steps 0` (speed does not depend on the weights), then checks what a user
does next with the checkpoint:

- reload: `timm.create_model("local-dir:CKPT", pretrained=True)` gives the same logits as
  `cait_cli.load(CKPT)` (max difference);
- dense: `features_only=True` at a non-square input (two more patches wide) gives the full patch
  grid (shape checked, not just run);
- ONNX: `cait_cli.export(CKPT)` writes a file only when ONNX Runtime matches PyTorch within 1e-4
  (its max difference is reported).

    python -m benchmarks.families --out benchmarks/results/families_cpu.md
    python -m benchmarks.families --models eva02_tiny_patch14_224 --targets 1.5 --bench-batch-size 2  # smoke
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import timm
import torch

import cait_cli
from benchmarks import harness
from cait_cli.errors import CaitError

MODELS = ["vit_base_patch16_siglip_224", "vit_medium_patch16_gap_256", "eva02_tiny_patch14_224",
          "vit_small_patch16_dinov3"]


def reload_difference(ckpt: Path, loaded: torch.nn.Module, images: torch.Tensor) -> float:
    """Max |logits| difference, timm's local-dir loader vs `loaded` (cait_cli.load's model)."""
    with torch.inference_mode():
        ours = loaded(images)
        theirs = timm.create_model(f"local-dir:{ckpt}", pretrained=True).eval()(images)
    return float((ours - theirs).abs().max())


def dense_maps(ckpt: Path, height: int, width: int, patch: int) -> str:
    """features_only at (height, width): the maps' shape, and whether it is the full patch grid."""
    features = timm.create_model(f"local-dir:{ckpt}", pretrained=True, features_only=True).eval()
    with torch.inference_mode():
        maps = features(torch.randn(1, 3, height, width))
    grid = (height // patch, width // patch)
    full = all(tuple(m.shape[-2:]) == grid for m in maps)
    return f"{len(maps)} maps {tuple(maps[-1].shape[1:])}" + ("" if full else f" NOT the {grid} grid")


def onnx_difference(ckpt: Path, out: Path) -> str:
    try:
        report = cait_cli.export(str(ckpt), out=out, overwrite=True)
    except CaitError as err:
        return f"refused: {err}"
    return f"{max(report['max_difference'].values()):.1e}"


def add_row(table: harness.Table, model: str, target: float, args: argparse.Namespace, tmp: Path) -> bool:
    """One model at one target; whether it landed in the band."""
    ckpt = tmp / f"{model}-{target:g}.cait"
    start = time.perf_counter()
    try:
        result = cait_cli.compress(model, target_speedup=target, out=ckpt, weights="random", calib_steps=0,
                                   finetune_steps=0, bench_batch_size=args.bench_batch_size,
                                   latency_cache=tmp / "latency", overwrite=True)
    except CaitError as err:
        table.add(model, f"{target:g}x", f"refused: {err}")
        return False
    wall = time.perf_counter() - start
    report: Dict[str, Any] = result.report
    low, high = report["measured_speedup_range"]
    loaded = cait_cli.load(str(ckpt))
    embed = loaded.patch_embed
    (height, width), patch = embed.img_size, embed.patch_size[0]
    images = torch.randn(2, 3, height, width)
    table.add(model, f"{target:g}x", harness.plan_cell(report),
              f"{report['measured_speedup']:.2f}x ({low:.2f}-{high:.2f})",
              f"{'yes' if report['landed'] else 'NO'} ({harness.landing_cell(report)})",
              f"{reload_difference(ckpt, loaded, images):.1e}", dense_maps(ckpt, height, width + 2 * patch, patch),
              onnx_difference(ckpt, tmp / f"{model}-{target:g}.onnx"), f"{wall / 60:.1f} min")
    return bool(report["landed"])


def main() -> None:
    parser = harness.make_parser(__doc__, "bench_batch", "out", models=MODELS, targets=[1.5, 1.9])
    args = parser.parse_args()
    table = harness.Table("model", "target", "plan (merges after blocks; keep)", "measured (repeat range)",
                          "in band (landing measurements)", "reload max diff (local-dir vs cait_cli.load)",
                          "features_only, non-square", "ONNX max diff", "wall", echo=True)
    with tempfile.TemporaryDirectory(prefix="cait-families-") as tmp:
        landed = [add_row(table, model, target, args, Path(tmp)) for model in args.models for target in args.targets]
    harness.write_results(args.out, "The ViT families people use now, compressed on this device", table.lines,
                          headline=f"{sum(landed)} of {len(landed)} model-target pairs landed in the band")


if __name__ == "__main__":
    harness.run_script(main)
