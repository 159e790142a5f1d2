"""Dense transfer on real images: Fashion-MNIST scenes segmented on frozen compressed backbones.

    python examples/make_fashion_subset.py --out /tmp/fashion_proof --train-per-class 2000 --val-per-class 1000
    python benchmarks/segment.py --reference examples/reference --data /tmp/fashion_proof \\
        --out benchmarks/results/segment_cpu

The task (benchmarks/scenes.py): 112x112 scenes of 2-4 garments from the official
splits (train scenes from the training split, test scenes from the test split),
each pixel labelled with its garment's class where the garment has ink, background
elsewhere. The backbones: the bundled reference and its versions compressed to about
`--speedup` on classification (at the reference's own 56x56 input), made exactly as
benchmarks/proof.py makes them (same training budget, on `--data`):

- cait: `cait compress` (ATME + CDCP), features unmerged back to the full grid
- tome: ToMe, fine-tuned; its merges traced back to the grid (peers/tome.py); r, the
  tokens merged per block, is scaled with the scene's patch count so that it merges
  the same fraction of tokens as at the classification size
- torch-pruning: channel pruning, fine-tuned (keeps every token), in each of its four settings
  (uniform or global ranking x L2 or Taylor importance, benchmarks/peers/channel_pruning.py)

Protocol (benchmarks/segment_head.py): the backbone stays frozen; a light head
(BatchNorm, 3x3 conv, ReLU, 1x1 conv on the patch grid, bilinear upsampling) is
trained on the features of four blocks with the same steps, batches and init for
every backbone, once per head seed (`--head-seeds`, on features computed once), so
the table shows how far mIoU moves with the head's initialisation and batches alone.
Reported: mIoU on the test scenes, and end-to-end speedup (backbone + head) at the
scene size over the reference's, every model interleaved in one run.
Writes OUT.md (table, command), OUT.json and OUT.png (test scenes with predicted masks).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness, proof  # noqa: E402
from benchmarks.fashion_mnist import DEBIAN_FASHION_MNIST  # noqa: E402
from benchmarks.peers.channel_pruning import SETTINGS  # noqa: E402
from benchmarks.scenes import NUM_CLASSES, SceneConfig, load_scenes  # noqa: E402
from benchmarks.segment_head import (  # noqa: E402
    FrozenBackbone,
    HeadConfig,
    SceneSet,
    Segmenter,
    SegScore,
    evaluate_head,
    features_of,
    fit_head,
    predict,
)
from cait_cli.atomic import write_json_atomic  # noqa: E402
from cait_cli.errors import CaitError  # noqa: E402
from cait_cli.models.loading import load_model  # noqa: E402
from cait_cli.pipeline.data.batches import StepBatches  # noqa: E402
from cait_cli.pipeline.data.sources import (  # noqa: E402
    collate_skipping,
    dataset_from,
    eval_transform,
    resolve_data_config,
    split_roots,  # noqa: E402
)
from cait_cli.pipeline.measuring.measure import (  # noqa: E402
    SpeedConfig,
    count_params,
    measure_throughput,
    paired_speedup,
)

REFERENCE = "reference (uncompressed)"


@dataclass
class SegRow:
    method: str
    setting: str
    params: int = 0
    miou: Optional[float] = None  # mean over the head seeds
    pixel_accuracy: Optional[float] = None
    iou: List[float] = field(default_factory=list)
    miou_seeds: List[float] = field(default_factory=list)  # one per head seed
    speedup: Optional[float] = None
    speedup_range: List[float] = field(default_factory=list)
    note: str = ""

    @property
    def key(self) -> str:
        """Unique per backbone: torch-pruning has one row per setting."""
        return self.method if self.method != "torch-pruning" else f"torch-pruning ({self.setting.split(',')[0]})"


def feature_blocks(depth: int) -> List[int]:
    """Four evenly spaced blocks, the last one included (2, 5, 8, 11 for 12 blocks)."""
    return sorted({max(0, depth * k // 4 - 1) for k in (1, 2, 3, 4)})


def compressed_models(bench: proof.Bench, methods: List[str], speedup: float,
                      cait_path: Optional[str]) -> List[tuple[SegRow, Optional[nn.Module]]]:
    """The compressed backbones, made as benchmarks/proof.py makes them."""
    made: List[tuple[SegRow, Optional[nn.Module]]] = []
    for method in methods:
        if method == "cait" and cait_path:
            made.append((SegRow("cait", f"given: {cait_path}"), load_model(cait_path).model.eval()))
            continue
        if method == "cait":
            produced = [proof.ours(bench, "cait", speedup)]
        elif method == "tome":
            produced = [p for p in proof.tome(bench, speedup) if p[0].trained or p[1] is None]
        else:
            produced = [proof.pruned_at(bench, speedup, setting) for setting in SETTINGS]
        for row, model in produced:
            made.append((SegRow(row.method, row.setting, note=row.note), model))
    return made


def at_scene_size(model: nn.Module, size: int, method: str) -> nn.Module:
    """The backbone at the scene size: position embeddings resampled once (timm's set_input_size)."""
    model = copy.deepcopy(model)
    before = model.patch_embed.num_patches
    model.set_input_size(img_size=(size, size))
    if method == "tome":  # merge the same fraction of tokens per block as at the classification size
        for block in model.blocks:
            if block.merge is not None:
                block.merge.r = block.merge.r * model.patch_embed.num_patches // before
    return model.eval()


def heads_over_seeds(backbone: FrozenBackbone, train: SceneSet, test: SceneSet, cfg: HeadConfig,
                     seeds: int) -> tuple[nn.Module, List[SegScore]]:
    """Heads trained with `seeds` seeds (cfg.seed, cfg.seed + 1, ...) on one frozen backbone's cached
    features: the first seed's head and every seed's test score (how far mIoU moves by the head alone)."""
    train_features, test_features = features_of(backbone, train), features_of(backbone, test)
    heads = [fit_head(train_features, NUM_CLASSES, train, replace(cfg, seed=cfg.seed + k)) for k in range(seeds)]
    return heads[0], [evaluate_head(head, test_features, test, NUM_CLASSES) for head in heads]


def run(args: argparse.Namespace) -> tuple[List[SegRow], Dict[str, object], dict]:
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    reference = load_model(args.reference).model.to(device).eval()
    data_cfg = resolve_data_config(reference)
    train = dataset_from(split_roots(args.data)[0], eval_transform(data_cfg), label_names=data_cfg.get("label_names"))
    bench = proof.Bench(reference, args.reference, args.data, StepBatches(train, args.batch_size, args.seed,
                        collate_skipping), args.steps, args.batch_size, args.lr, args.bench_batch_size, device,
                        args.work, args.seed)
    made = [(SegRow(REFERENCE, "no compression"), reference)]
    made += compressed_models(bench, args.methods, args.speedup, args.cait)

    scene_cfg = SceneConfig(size=args.scene_size)
    mean, std = float(data_cfg["mean"][0]), float(data_cfg["std"][0])
    train_set = SceneSet(*load_scenes(args.fashion_root, "train", args.train_scenes, scene_cfg, args.seed), mean, std)
    test_set = SceneSet(*load_scenes(args.fashion_root, "test", args.test_scenes, scene_cfg, args.seed + 1), mean, std)
    head_cfg = HeadConfig(args.head_steps, args.head_batch_size, args.head_lr, args.seed)

    rows: List[SegRow] = []
    segmenters: Dict[str, nn.Module] = {}
    for row, model in made:
        rows.append(row)
        if model is None:
            print(f"{row.method}: not reached ({row.note})", flush=True)
            continue
        scene_model = at_scene_size(model, args.scene_size, row.method)
        backbone = FrozenBackbone(scene_model, feature_blocks(len(scene_model.blocks)), row.method == "tome")
        head, scores = heads_over_seeds(backbone, train_set, test_set, head_cfg, args.head_seeds)
        row.params, row.miou_seeds = count_params(model), [s.miou for s in scores]
        row.miou, row.pixel_accuracy = fmean(s.miou for s in scores), fmean(s.pixel_accuracy for s in scores)
        row.iou = np.nanmean([s.iou for s in scores], axis=0).tolist()
        segmenters[row.key] = Segmenter(backbone, head).eval()
        seeds = " / ".join(f"{100 * m:.2f}" for m in row.miou_seeds)
        print(f"{row.key}: {row.setting}; mIoU {100 * row.miou:.2f} (head seeds: {seeds})", flush=True)

    print("measuring every segmenter end to end, interleaved", flush=True)
    speed = measure_throughput(segmenters, (3, args.scene_size, args.scene_size),
                               SpeedConfig(args.bench_batch_size, warmup=2, repeats=args.repeats), device)
    for row in rows:
        if row.key in segmenters:
            ratio, low, high = paired_speedup(speed, row.key, REFERENCE)
            row.speedup, row.speedup_range = ratio, [low, high]
    return rows, segmenters, {"test": test_set}


TITLE = "Dense transfer: Fashion-MNIST scenes segmented on frozen compressed backbones"


def table(meta: dict, rows: List[SegRow]) -> List[str]:
    """The results' body: the protocol's settings and a row per backbone."""
    ref = next(r.miou for r in rows if r.method == REFERENCE)
    every = harness.Table("method", "setting", "end-to-end speedup", "mIoU (%)", "Δ mIoU (pt)", "pixel accuracy (%)",
                          "params (M)")
    for r in rows:
        if r.miou is None:
            every.add(r.method, f"not reached: {r.note}", *["—"] * 5)
            continue
        every.add(r.method, r.setting, f"{r.speedup:.2f}x ({r.speedup_range[0]:.2f}-{r.speedup_range[1]:.2f})",
                  miou_cell(r), f"{100 * (r.miou - ref):+.2f}", f"{100 * r.pixel_accuracy:.2f}",
                  f"{r.params / 1e6:.3f}")
    return [
        f"Scenes {meta['scene_size']}x{meta['scene_size']}, {meta['train_scenes']} train (official training split), "
        f"{meta['test_scenes']} test (official test split). Frozen backbone, light head (BN, 3x3 conv, ReLU, 1x1 conv, "
        f"bilinear upsampling) on blocks {meta['blocks']}, {meta['head_steps']} steps of batch "
        f"{meta['head_batch_size']}, {meta.get('head_seeds', 1)} head seed(s) per backbone (mIoU: their mean, range in "
        f"brackets). Backbones compressed for {meta['speedup']:g}x on classification at 56x56 as benchmarks/proof.py "
        f"does ({meta['steps']} steps). End-to-end speedup (backbone + head) at the scene size, batch "
        f"{meta['bench_batch_size']}, fp32, interleaved in one run (median of paired ratios). Total time "
        f"{meta['seconds'] / 60:.0f} min.", "", *every.lines]


def headline(rows: List[SegRow]) -> str:
    """Every compressed backbone: end-to-end speedup and mIoU against the reference's."""
    ref = next(r.miou for r in rows if r.method == REFERENCE)
    return ", ".join(f"{r.key} {r.speedup:.2f}x {100 * (r.miou - ref):+.2f} pt" for r in rows
                     if r.method != REFERENCE and r.miou is not None) or "no backbone reached the target"


def miou_cell(row: SegRow) -> str:
    """Mean mIoU (%), with the range over head seeds when there are several."""
    if len(row.miou_seeds) < 2:
        return f"{100 * row.miou:.2f}"
    return f"{100 * row.miou:.2f} ({100 * min(row.miou_seeds):.2f}-{100 * max(row.miou_seeds):.2f})"


def plot_scenes(segmenters: Dict[str, nn.Module], test: SceneSet, path: Path, count: int = 4) -> None:
    """A few test scenes: the image, the truth, and every backbone's predicted mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    palette = ListedColormap(["black"] + list(plt.get_cmap("tab10").colors))
    images, masks = test.batch(range(min(count, len(test))))
    columns = ["scene", "truth", *segmenters]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.8 * len(columns), 1.8 * len(images)),
                             dpi=110, squeeze=False)
    predictions = {name: predict(model, images) for name, model in segmenters.items()}
    for i in range(len(images)):
        panels = [(test.scenes[i], "gray"), (masks[i], palette)] + [(predictions[n][i], palette) for n in segmenters]
        for ax, (panel, cmap), title in zip(axes[i], panels, columns):
            ax.imshow(panel, cmap=cmap, vmin=0, vmax=None if cmap == "gray" else NUM_CLASSES - 1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title.replace(" (uncompressed)", ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = harness.make_parser(
        __doc__, "reference", "lr", "seed",
        data=harness.Default(help="ImageFolder root (train/, val/) for compressing the backbones", required=True),
        train_steps=harness.Default(300, "training budget of every compressed backbone"), train_batch=64,
        bench_batch=harness.Default(32, "batch of every speed measurement (compressing, end to end)"), repeats=11,
        work=Path("/tmp/cait-segment"), out_stem=Path("benchmarks/results/segment_cpu"))
    parser.add_argument("--fashion-root", type=Path, default=DEBIAN_FASHION_MNIST, help="Fashion-MNIST IDX files")
    parser.add_argument("--methods", nargs="+", default=["cait", "tome", "torch-pruning"],
                        choices=["cait", "tome", "torch-pruning"])
    parser.add_argument("--cait", help="use this compressed checkpoint instead of compressing the reference")
    parser.add_argument("--speedup", type=float, default=1.9, help="classification speedup the backbones target")
    parser.add_argument("--scene-size", type=int, default=112)
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument("--test-scenes", type=int, default=1000)
    parser.add_argument("--head-steps", type=int, default=600)
    parser.add_argument("--head-batch-size", type=int, default=32)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--head-seeds", type=int, default=1,
                        help="heads trained per backbone (seeds --seed, --seed + 1, ...; about 4 CPU minutes "
                             "each); mIoU is their mean")
    args = parser.parse_args()
    if args.scene_size % 4:
        raise CaitError(f"--scene-size must be a multiple of the patch size (4), got {args.scene_size}")
    if args.head_seeds < 1:
        raise CaitError(f"--head-seeds must be at least 1, got {args.head_seeds}")
    started = time.time()
    rows, segmenters, sets = run(args)
    reference = next(s for name, s in segmenters.items() if name == REFERENCE)
    this_run = harness.Run.now()
    meta = {"run": asdict(this_run), "scene_size": args.scene_size, "train_scenes": args.train_scenes,
            "test_scenes": args.test_scenes, "blocks": feature_blocks(len(reference.backbone.model.blocks)),
            "head_steps": args.head_steps, "head_batch_size": args.head_batch_size, "head_seeds": args.head_seeds,
            "speedup": args.speedup, "steps": args.steps, "bench_batch_size": args.bench_batch_size,
            "seconds": round(time.time() - started)}
    write_json_atomic(harness.beside(args.out, ".json"), {"meta": meta, "rows": [asdict(r) for r in rows]})
    harness.write_results(harness.beside(args.out, ".md"), TITLE, table(meta, rows), headline(rows), run=this_run)
    plot_scenes(segmenters, sets["test"], harness.beside(args.out, ".png"))


if __name__ == "__main__":
    harness.run_script(main)
