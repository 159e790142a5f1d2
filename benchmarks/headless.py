"""Does distilling a headless backbone's features move the compressed model toward the original?

A DINOv2 ViT-S/14 with registers shipped without a classifier (`num_classes=0`), built by timm with
random weights at 224 px (16x16 patches; the 518 px default is too slow to train on 2 cores) and
its LayerScale factors set to `--layer-scale` (timm initialises them at 1e-5, which leaves an
untrained DINOv2 almost the identity of its patch embedding, with nothing for merging to lose),
is saved in timm's local layout and compressed twice with the README quick start's short run:

1. `--calib-steps 0 --finetune-steps 0`: the compressed model before any training;
2. `--calib-steps 50 --finetune-steps 150`: after the short run (headless: the feature loss).

Both share one latency table and keep their first plan (`replan=False`), so both slim the same
plan; only the training differs. On the data's held-out images the benchmark reads the cosine of
each compressed model's final tokens (unmerged onto the full patch grid) and pooled feature to the
original's.

    python -m benchmarks.headless --out benchmarks/results/headless_cpu.md
    python -m benchmarks.headless --calib-steps 2 --finetune-steps 2 --bench-batch-size 2  # smoke
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import cait_cli
from benchmarks import harness
from benchmarks.one_plan import RUN_OPTIONS, compress_run, require_one_plan
from cait_cli.atomic import write_json_atomic
from cait_cli.pipeline.data.sources import eval_loader, resolve_data_config
from cait_cli.pipeline.training.train import distill_outputs

ARCHITECTURE = "vit_small_patch14_reg4_dinov2"


def save_headless_dinov2(folder: Path, img_size: int, layer_scale: float, seed: int) -> Path:
    """timm's local layout (config.json + model.safetensors) of a random headless DINOv2."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, img_size=img_size)
    for name, param in model.named_parameters():
        if name.endswith(".gamma"):  # LayerScale
            param.data.fill_(layer_scale)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    cfg = model.pretrained_cfg
    write_json_atomic(folder / "config.json", {
        "architecture": ARCHITECTURE, "num_classes": 0, "model_args": {"img_size": img_size},
        "pretrained_cfg": {"input_size": [3, img_size, img_size], "mean": list(cfg["mean"]),
                           "std": list(cfg["std"]), "crop_pct": 1.0, "interpolation": "bicubic"}})
    return folder


@torch.inference_mode()
def cosines(compressed: torch.nn.Module, original: torch.nn.Module, data: str) -> Tuple[float, float, int]:
    """Mean cosine to the original's final tokens (full grid) and pooled feature, over held-out images."""
    images, _ = eval_loader(data, resolve_data_config(original), batch_size=32)
    token_sum = pooled_sum = 0.0
    count = 0
    for batch, _labels in images:
        (tokens, pooled), (want_tokens, want_pooled) = distill_outputs(compressed, batch), distill_outputs(original,
                                                                                                          batch)
        token_sum += float(F.cosine_similarity(tokens, want_tokens, dim=-1).mean(-1).sum())
        pooled_sum += float(F.cosine_similarity(pooled, want_pooled, dim=-1).sum())
        count += batch.shape[0]
    return token_sum / count, pooled_sum / count, count


Runs = Dict[str, Tuple[Dict[str, Any], Tuple[float, float, int]]]  # name -> (report, cosines)


def add_row(table: harness.Table, name: str, report: Dict[str, Any], tokens: float, pooled: float) -> None:
    loss = (report.get("training") or {}).get("loss", "—")
    reported = report["compressed"].get("feature_cosine")
    table.add(name, harness.plan_cell(report), loss, f"{tokens:.4f}", f"{pooled:.4f}",
              "—" if reported is None else f"{reported:.4f}", f"{report['measured_speedup']:.2f}x",
              f"{report['wall_s'] / 60:.1f} min")


def main() -> None:
    parser = harness.make_parser(__doc__, "seed", *RUN_OPTIONS, train_batch=harness.Default(
        16, "training batch (the quick start: 64)"), bench_batch=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--layer-scale", type=float, default=1.0)
    args = parser.parse_args()
    runs: Runs = {}
    table = harness.Table("run", "plan (merges after blocks; keep)", "loss (report)", "final-token cosine to original",
                          "pooled cosine", "report's feature cosine", "measured speedup", "wall", echo=True)
    with tempfile.TemporaryDirectory(prefix="cait-headless-") as tmp:
        source = save_headless_dinov2(Path(tmp) / "dinov2", args.img_size, args.layer_scale, args.seed)
        original = cait_cli.load(str(source))
        for name, calib, finetune in (("before: no training", 0, 0),
                                      (f"after: {args.calib_steps} + {args.finetune_steps} steps",
                                       args.calib_steps, args.finetune_steps)):
            out = Path(tmp) / f"run{len(runs)}.cait"
            report = compress_run(str(source), out, args.latency_cache or out.parent / "latency",
                                  target_speedup=args.target, data=args.data, calib_steps=calib,
                                  finetune_steps=finetune, batch_size=args.batch_size,
                                  bench_batch_size=args.bench_batch_size, seed=args.seed)
            runs[name] = report, cosines(cait_cli.load(str(out)), original, args.data)
            add_row(table, name, report, *runs[name][1][:2])
    require_one_plan(report for report, _ in runs.values())
    (_, (before, _, images)), (_, (after, _, _)) = runs.values()
    verdict = (f"final-token cosine to the original {before:.4f} before the short run, {after:.4f} after it "
               f"({'closer' if after > before else 'NOT closer'})")
    body = [f"{ARCHITECTURE} (num_classes=0, random weights, LayerScale {args.layer_scale:g}, {args.img_size} px) "
            f"compressed to {args.target:g}x on {args.data} (labels unused: the model has no classifier), training "
            f"batch {args.batch_size}, timing batch {args.bench_batch_size}, seed {args.seed}, one plan for both "
            f"runs. Cosines are means over {images} held-out images.", "", *table.lines]
    harness.write_results(args.out, f"A headless DINOv2 at {args.target:g}x: does the feature loss move the "
                          "compressed tokens toward the original's?", body, headline=verdict)


if __name__ == "__main__":
    harness.run_script(main)
