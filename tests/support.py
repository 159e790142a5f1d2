"""Test support: tiny timm ViTs, a Hugging Face cache the tests build, fresh processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
from safetensors.torch import save_file

from cait_cli.pipeline.progress import Silent

TINY = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=7)


def tiny_vit(name: str = "vit_tiny_patch16_224", **overrides) -> torch.nn.Module:
    """A randomly initialised timm ViT small enough for unit tests (8x8 grid)."""
    torch.manual_seed(0)
    kwargs = {**TINY, **overrides}
    if "distilled" in name or "reg" in name:
        kwargs.pop("embed_dim"), kwargs.pop("num_heads")
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def write_hub_repo(cache: Path, repo_id: str, files: Dict[str, bytes]) -> Path:
    """Lay out `files` as the Hugging Face cache does after a download of repo_id@main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def safetensors_bytes(model: torch.nn.Module, tmp: Path) -> bytes:
    path = tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


def run_python(code: str, env: Optional[Dict[str, str]] = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (env vars such as HF_HUB_OFFLINE are read at import)."""
    full_env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32,
                      splits=("train", "val"), seed: int = 0) -> Path:
    """An ImageFolder whose classes differ in colour, so a tiny ViT can tell them apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros((size, size, 3)) + 255 * (np.arange(3) == c % 3)
                pixels = np.clip(base * 0.7 + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def save_tiny_timm_dir(path: Path, model: torch.nn.Module, args: dict) -> Path:
    """A local model directory in timm's layout (config.json + model.safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": args["num_classes"],
              "pretrained_cfg": {"input_size": [3, args["img_size"], args["img_size"]],
                                 "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
                                 "interpolation": "bilinear"},
              "model_args": {k: v for k, v in args.items() if k != "num_classes"}}
    write_json(path / "config.json", config)
    return path


def synthetic_table(model: torch.nn.Module) -> "LatencyTable":
    """Latency proportional to tokens x kept width share, so predictions can be checked by hand.

    For tiny_vit's shape (8x8 grid, one class token, head width 16): per block half,
    tokens x width / full width milliseconds per image.
    """
    from cait_cli.pipeline.planning.latency import LatencyTable

    tokens = [1 + 64 // 2 ** k for k in range(6, -1, -1)]
    head, hidden = 16, model.blocks[0].mlp.fc1.out_features
    attn_widths, mlp_widths = [2, 4, 8, 12, 16], [hidden // 8, hidden // 4, hidden // 2, hidden]
    attn = [[n * w / head for w in attn_widths] for n in tokens]
    mlp = [[n * w / hidden for w in mlp_widths] for n in tokens]
    return LatencyTable("synthetic", tokens, attn_widths, mlp_widths, attn, mlp, [0.0] * len(tokens), fixed_ms=0.0)


def mac_speeds(models, input_size, cfg, device, forwards=None, stop=None):
    """A stand-in for measure_throughput: images/s in proportion to 1 / MACs, three repeats a per cent
    apart (the speedups are MAC ratios, whatever this busy machine's load)."""
    from cait_cli.method.cost import model_macs
    from cait_cli.pipeline.measuring.measure import SpeedResult

    def result(name, model):
        rate = 1e9 / model_macs(model)
        return SpeedResult(name, rate, 0.99 * rate, 1.01 * rate, [0.99 * rate, rate, 1.01 * rate],
                           cfg.batch_for(device), "test CPU", "fp32, eager", 1)
    return {name: result(name, model) for name, model in models.items()}


class LossLog(Silent):
    """Progress that keeps the training losses it is told, by phase."""

    def __init__(self) -> None:
        self.current: Optional[str] = None
        self.losses: Dict[str, List[float]] = {}

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self.current = phase

    def advance(self, step: int, **metrics) -> None:
        self.losses.setdefault(self.current, []).append(metrics["loss"])


class StopAt(LossLog):
    """Progress that presses Ctrl-C at a given step of a phase, or sends this process
    `signal_number` there (SIGTERM: as a scheduler or `kill` stops a job)."""

    def __init__(self, phase: str, step: int, signal_number: Optional[int] = None) -> None:
        super().__init__()
        self.phase, self.step, self.signal_number = phase, step, signal_number

    def advance(self, step: int, **metrics) -> None:
        super().advance(step, **metrics)
        if self.current == self.phase and step == self.step:
            if self.signal_number is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.signal_number)


def save_compressed_tiny(root: Path, args: dict, merge_blocks, model: Optional[torch.nn.Module] = None
                         ) -> Dict[str, str]:
    """A tiny timm ViT directory (`model`, or a random one) and its compressed checkpoint (merges
    after `merge_blocks`, half the gated channel MACs kept), plus a 3-class image folder."""
    from cait_cli.method.atme import alternating_schedule
    from cait_cli.method.cdcp import attach_gates, set_budget
    from cait_cli.method.model import patch_vit
    from cait_cli.method.slim import slim
    from cait_cli.models.checkpoint import save_checkpoint
    from cait_cli.models.loading import load_model
    from cait_cli.models.spec import CaitSpec

    base_dir = save_tiny_timm_dir(root / "base", model if model is not None else tiny_vit(**args), args)
    loaded = load_model(str(base_dir))
    model = patch_vit(loaded.model, alternating_schedule(list(merge_blocks), tuple(loaded.model.patch_embed.grid_size)))
    attach_gates(model)
    set_budget(model, 0.5)
    slim(model)
    ckpt = save_checkpoint(model, root / "small.cait", CaitSpec.of(model, loaded.architecture, loaded.model_args),
                           {"base_model": str(base_dir)})
    data = make_image_folder(root / "data", classes=3, per_class=4)
    return {"base": str(base_dir), "ckpt": str(ckpt), "data": str(data)}


def idx_bytes(array) -> bytes:
    """An IDX file (unsigned bytes) holding `array`, as Fashion-MNIST ships them."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype("uint8").tobytes()


def write_fashion_idx(root: Path, count: int = 12) -> Path:
    """Fashion-MNIST's four gzipped IDX files under root, `count` random garments per split."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, size=(count, 28, 28))),
                            ("labels-idx1", rng.integers(0, 10, size=count))):
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return root
