"""Is the training input fast enough? Images/s through `cait compress`'s training loop.

A generated folder of 224x224 JPEGs and a model small enough that decoding, not the
model, sets the pace. The same fine-tuning loop (compress's run_phase, N steps)
runs three ways: its batches decoded by --workers 2 processes, by the main process
(--workers 0), and from pre-made tensors in memory (the model step alone, no
decoding). Goal: with workers, within 10% of the model-step rate.

    python -m benchmarks.input_speed --out benchmarks/results/input_speed_cpu.md
    python -m benchmarks.input_speed --images 64 --steps 4 --warmup 1   # smoke test (seconds)
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import Dataset

from benchmarks import harness
from cait_cli.method.atme import MergeStep, alternating_schedule
from cait_cli.method.cdcp import set_budget
from cait_cli.method.slim import slim
from cait_cli.models.loading import load_model
from cait_cli.pipeline.data.device_decode import training_batches
from cait_cli.pipeline.data.sources import open_data, resolve_data_config
from cait_cli.pipeline.job import CompressConfig, lr_for
from cait_cli.pipeline.progress import Silent
from cait_cli.pipeline.training.calibrate import apply_budget, gated_student
from cait_cli.pipeline.training.loop import run_phase
from cait_cli.pipeline.training.train import TrainConfig

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

    def __init__(self, images: torch.Tensor, classes: int = 10) -> None:
        self.images, self.classes = images, classes  # (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % self.classes


def premade_inputs(images: int, size: int, classes: int = 10) -> Dataset:
    """Pre-made tensors in memory, labelled by `classes`: what the loop trains on when nothing is decoded
    (the model step alone)."""
    return InMemory(torch.randn(images, 3, size, size), classes)


def fixed_schedule(model: torch.nn.Module) -> List[MergeStep]:
    """Input speed does not depend on the plan: merge once after block 1 (no planner, no block timings)."""
    return alternating_schedule((1,), tuple(model.patch_embed.grid_size))


def training_rates(model: str, data: Union[str, Dataset], steps: int, batch: int, warmup: int, workers: int,
                   device: str = "cpu", calib_steps: int = 0, keep: float = 1.0, amp: bool = True,
                   compile: Optional[bool] = None, decode: str = "auto") -> Dict[str, float]:
    """Images/s of CDCP calibration (if calib_steps) and fine-tuning through `cait compress`'s own loop
    (run_phase) and batches (training_batches), on a fixed plan: merge after block 1, keep `keep` of
    the channel MACs. `data`: a folder of images, or a Dataset of pre-made tensors (premade_inputs).
    `compile`: the training step under torch.compile; None: on CUDA yes, on the CPU no (as compress)."""
    dev = torch.device(device)
    base = load_model(model, "random").model.to(dev).eval()
    data_cfg = resolve_data_config(base)
    if not isinstance(data, Dataset):  # labels that are not the model's classes are dropped, as compress drops them
        data = open_data(data, data_cfg, batch_size=batch, workers=workers, num_classes=base.num_classes).train
    batches = training_batches(data, data_cfg, batch_size=batch, seed=0, workers=workers, device=dev, decode=decode)
    clock = StepClock(batch, warmup)
    loop = dict(teacher=base, batches=batches, device=dev, progress=clock,
                compile=dev.type == "cuda" if compile is None else compile)

    def train_config(phase_steps: int) -> TrainConfig:
        return TrainConfig(steps=phase_steps, lr=lr_for(batch), amp=amp and dev.type == "cuda")

    student = gated_student(base, fixed_schedule(base), CompressConfig.channel_multiple)  # compress's default widths
    if calib_steps:
        run_phase(student, tcfg=train_config(calib_steps), phase="calibrate",
                  before_step=lambda step: apply_budget(student, step, calib_steps, keep), **loop)
    set_budget(student, keep)
    run_phase(slim(copy.deepcopy(student)), tcfg=train_config(steps), phase="finetune", **loop)
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
        run = dict(steps=args.steps, batch=args.batch_size, warmup=args.warmup)
        alone = training_rates(model, premade_inputs(args.images, SMALL["img_size"]), workers=0, **run)["finetune"]
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
