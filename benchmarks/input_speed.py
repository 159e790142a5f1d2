"""Is the training input fast enough? Images/s through `cait compress`'s training loop.

A generated folder of 224x224 JPEGs and a model small enough that decoding, not the
model, sets the pace. The same fine-tuning loop (compress with --finetune-steps N)
runs three ways: its batches decoded by --workers 2 processes, by the main process
(--workers 0), and from pre-made tensors in memory (the model step alone, no
decoding). Goal: with workers, within 10% of the model-step rate.

    python -m benchmarks.input_speed --out benchmarks/results/input_speed_cpu.md
    python -m benchmarks.input_speed --images 64 --steps 4 --warmup 1   # smoke test (seconds)
"""
from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import Dataset

from benchmarks import harness
from cait_cli.method.atme import alternating_schedule
from cait_cli.pipeline import compress as compress_module
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.planning.plan import Plan
from cait_cli.pipeline.progress import Silent

# decoding dominates: a 224x224 input, 16x16 patches, but only 2 narrow blocks
SMALL = dict(img_size=224, patch_size=16, depth=2, embed_dim=64, num_heads=2, num_classes=10)


def make_jpeg_folder(root: Path, images: int, classes: int = 10, size: int = 224, seed: int = 0,
                     width: Optional[int] = None) -> Path:
    """root/train/class_k/*.jpg: smooth colour fields with noise (decode cost of a photo, about),
    size x size, or width x size (ImageNet's typical photo: width 500, size 375)."""
    rng = np.random.default_rng(seed)
    width = width or size
    ramp = np.linspace(0, 1, width)[None, :, None]
    for i in range(images):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.uniform(0, 255, 3)
        pixels = colour * ramp + rng.normal(0, 25, (size, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / f"{i}.jpg", quality=90)
    return root


def save_model_dir(path: Path, args: Dict) -> Path:
    """A local model directory in timm's layout (random weights: speed does not depend on them)."""
    path.mkdir(parents=True, exist_ok=True)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": args["num_classes"],
        "pretrained_cfg": {"input_size": [3, args["img_size"], args["img_size"]], "mean": [0.5] * 3,
                           "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 0.9},
        "model_args": {k: v for k, v in args.items() if k != "num_classes"}}))
    return path


class StepClock(Silent):
    """Images/s of each training phase, from the end of step `warmup` to the last step."""

    def __init__(self, batch: int, warmup: int) -> None:
        self.batch, self.warmup, self.rates, self.phase = batch, warmup, {}, None
        self.times: List[float] = []

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self.phase, self.times = phase, []

    def advance(self, step: int, **metrics: float) -> None:
        self.times.append(time.perf_counter())

    def stop(self) -> None:
        timed = self.times[self.warmup:]
        if len(timed) > 1:
            self.rates[self.phase] = (len(timed) - 1) * self.batch / (timed[-1] - timed[0])


class InMemory(Dataset):
    """Pre-made (image, label) tensors: the loop with nothing to decode."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images  # (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 10


@contextmanager
def fixed_plan(keep: float = 1.0) -> Iterator[None]:
    """Input speed does not depend on the plan: merge once after block 1 (and keep `keep` of the
    channel MACs), so that a busy machine's block timings cannot make the planner refuse."""
    real = compress_module._plan

    def plan(job):
        grid = tuple(job.base.patch_embed.grid_size)
        return Plan(alternating_schedule((1,), grid), keep, 1.0)

    compress_module._plan = plan
    try:
        yield
    finally:
        compress_module._plan = real


@contextmanager
def premade_inputs(images: int, size: int) -> Iterator[None]:
    """compress() reads its training data from tensors made once (the model step alone)."""
    real = compress_module.open_data

    def open_premade(*args, **kwargs):
        bundle = real(*args, **kwargs)
        bundle.train = InMemory(torch.randn(images, 3, size, size))
        return bundle

    compress_module.open_data = open_premade
    try:
        yield
    finally:
        compress_module.open_data = real


def training_rates(model: str, data: str, steps: int, batch: int, warmup: int, workers: int, tmp: Path,
                   device: str = "cpu", calib_steps: int = 0, target: float = 1.3, method: str = "atme",
                   bench_batch: Optional[int] = None, amp: bool = True, **options) -> Dict[str, float]:
    """Images/s of calibration (if calib_steps) and fine-tuning through compress's own loop.
    `options`: further CompressConfig fields (compile, decode)."""
    cfg = CompressConfig(model=model, target_speedup=target, out=tmp / f"out-{time.monotonic_ns()}.cait",
                         data=data, calib_steps=calib_steps, finetune_steps=steps, batch_size=batch,
                         bench_batch_size=bench_batch, workers=workers, device=device, replan=False,
                         method=method, weights="random", latency_cache=tmp / "latency", max_val_images=0,
                         amp=amp, checkpoint_every=10 ** 9, **options)
    clock = StepClock(batch, warmup)
    compress(cfg, clock)
    return clock.rates


def main() -> None:
    parser = harness.make_parser(__doc__, "out", timed_steps=harness.Default(30, "fine-tuning steps (timed after "
                                 "--warmup)"), warmup=5, train_batch=32, workers=2)
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the model step on one core; the workers get the others

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = str(make_jpeg_folder(tmp / "jpegs", args.images))
        model = str(save_model_dir(tmp / "model", SMALL))
        run = dict(steps=args.steps, batch=args.batch_size, warmup=args.warmup, tmp=tmp)
        with fixed_plan():
            with premade_inputs(args.images, SMALL["img_size"]):
                alone = training_rates(model, data, workers=0, **run)["finetune"]
            rows = [("model step alone (pre-made tensors)", "-", alone)]
            for workers in (args.workers, 0):
                rate = training_rates(model, data, workers=workers, **run)["finetune"]
                rows.append((f"JPEG folder, --workers {workers}", str(workers), rate))
    table = harness.Table("input", "workers", "images/s", "of the model-step rate")
    for label, workers, rate in rows:
        table.add(label, workers, f"{rate:.1f}", f"{rate / alone:.0%}")
    with_workers = rows[1][2] / alone
    goal = (f"with {args.workers} workers {with_workers:.0%} of the model step: goal (within 10%) "
            f"{'met' if with_workers >= 0.9 else 'NOT met'}")
    body = [f"{args.images} JPEGs 224x224, ViT {SMALL}, batch {args.batch_size}, {args.steps} fine-tuning steps "
            f"(first {args.warmup} not timed), torch threads 1.", "", *table.lines]
    harness.write_results(args.out, "Is the training input fast enough? Images/s through `cait compress`'s "
                          "training loop", body, headline=goal)


if __name__ == "__main__":
    harness.run_script(main)
