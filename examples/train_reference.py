"""Train the reference ViT on Fashion-MNIST (the real images of examples/fashion_mnist).

DeiT-Tiny-shaped by default (embed 192, 3 heads, 12 blocks, class token) on images
resized to 56x56 with 4x4 patches: a 14x14 token grid, the grid of DeiT at 224/16,
so ATME schedules carry over. Writes a timm-style model directory (config.json +
fp16 model.safetensors) that `cait compress` loads as a local path.

    # DeiT-Tiny shape, on a GPU
    python examples/train_reference.py --out examples/reference --epochs 30
    # smaller, for a CPU
    python examples/train_reference.py --out examples/reference --embed-dim 96 --depth 6 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from teacher import load_teacher, save_teacher, train_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ holds the Fashion-MNIST reader and the script harness

from benchmarks.fashion_mnist import (  # noqa: E402
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
)
from benchmarks.harness import run_script  # noqa: E402
from cait_cli.atomic import atomic_directory, atomic_file  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images


def to_inputs(images: torch.Tensor, size: int, augment: bool, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 3, size, size), as the PNG pipeline sees them."""
    x = images.float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if augment:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        pad = size // 14
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        x = x[:, :, dy:dy + size, dx:dx + size]
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1)


def build(args: argparse.Namespace) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **model_args(args))


def model_args(args: argparse.Namespace) -> dict:
    return dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
                num_heads=args.heads, num_classes=10, drop_path_rate=args.drop_path)


@torch.inference_mode()
def accuracy(model, images, labels, size, batch=500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(to_inputs(images[i:i + batch], size, False, None))
        correct += int((logits.argmax(-1) == labels[i:i + batch]).sum())
    return correct / len(images)


def save(model, args, test_acc: float, out: Path, log_lines: list) -> None:
    saved_args = {k: v for k, v in model_args(args).items() if k not in ("num_classes", "drop_path_rate")}
    config = {
        "architecture": "vit_tiny_patch16_224", "num_classes": 10, "label_names": list(FASHION_MNIST_CLASSES),
        "pretrained_cfg": {"input_size": [3, args.img_size, args.img_size], "interpolation": "bilinear",
                           "crop_pct": 1.0, "crop_mode": "center", "mean": [MEAN] * 3, "std": [STD] * 3,
                           "num_classes": 10, "license": "mit"},
        "model_args": saved_args,
        "training": {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)", "epochs": args.epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "test_top1": test_acc, "seed": args.seed,
                     "init": str(args.init) if args.init else None,
                     "teacher": "convnet, hard distillation" if args.teacher else None},
    }
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "train.log").write_text("\n".join(log_lines) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEBIAN_FASHION_MNIST)
    parser.add_argument("--out", type=Path, default=Path("examples/reference"))
    parser.add_argument("--img-size", type=int, default=56)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--drop-path", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=500, help="warm-up steps (at most a tenth of the run)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--init", type=Path, help="start from this reference directory's weights")
    parser.add_argument("--teacher", type=Path,
                        help="convnet teacher (safetensors) for DeiT-style hard distillation; trained first if missing")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--state", type=Path,
                        help="resumable training state: written every --save-every steps, continued from if present")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def epoch_batches(images, labels, args, epoch: int, first_step: int = 0):
    """The augmented batches of one epoch, the same for a given (seed, epoch) whatever step it resumes at."""
    generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    for step in range(first_step, len(images) // args.batch_size):
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        step_generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 10_007 + step)
        yield to_inputs(images[idx], args.img_size, True, step_generator), labels[idx]


def get_teacher(args, train_x, train_y, log) -> torch.nn.Module | None:
    if args.teacher is None:
        return None
    if not args.teacher.exists():
        teacher = train_teacher(lambda epoch: epoch_batches(train_x, train_y, args, 1000 + epoch),
                                len(train_x) // args.batch_size, args.teacher_epochs, log)
        save_teacher(teacher, args.teacher)
    teacher = load_teacher(args.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def init_weights(model: torch.nn.Module, init: Path | None) -> None:
    if init is not None:
        model.load_state_dict({k: v.float() for k, v in load_file(str(init / "model.safetensors")).items()})


def save_state(path: Path, model, optimizer, step: int, log_lines: list) -> None:
    """Weights in fp32, Adam's moments in bf16 (fp32's range, half the bytes: the file is committed);
    loading casts the moments back to the parameters' dtype."""
    optim = optimizer.state_dict()
    optim["state"] = {i: {k: v.bfloat16() if k != "step" and v.is_floating_point() else v for k, v in st.items()}
                      for i, st in optim["state"].items()}
    with atomic_file(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optim, "step": step, "log": log_lines}, tmp)


def training_loss(model, teacher, x, y) -> torch.Tensor:
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    if teacher is None:
        return loss
    with torch.no_grad():
        teacher_labels = teacher(x).argmax(-1)
    return 0.5 * loss + 0.5 * F.cross_entropy(logits, teacher_labels)  # DeiT's hard distillation


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_x, train_y = (torch.from_numpy(np.array(a)) for a in load_fashion_mnist(args.root, "train"))
    test_x, test_y = (torch.from_numpy(np.array(a)) for a in load_fashion_mnist(args.root, "test"))
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(line)
        print(line, flush=True)

    teacher = get_teacher(args, train_x, train_y, log)
    if teacher is not None:
        log(f"teacher test top-1 {accuracy(teacher, test_x, test_y, args.img_size):.4f}")
        teacher = teacher.to(device)
    model = build(args).to(device)
    init_weights(model, args.init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = max(1, min(args.warmup, total // 10))
    step = 0
    if args.state is not None and args.state.exists():
        state = torch.load(args.state, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # carries each group's initial_lr
        step, log_lines[:0] = state["step"], state["log"]
        print(f"resumed at step {step}/{total}", flush=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / total))), last_epoch=step - 1)
    amp = device.type == "cuda"
    log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {total} steps on {device}")
    start = time.time()
    test_acc = float("nan")
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        model.train()
        for x, y in epoch_batches(train_x, train_y, args, epoch, first):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = training_loss(model, teacher, x.to(device), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0:
                log(f"epoch {epoch} step {step % steps_per_epoch or steps_per_epoch}/{steps_per_epoch} "
                    f"loss {loss.item():.4f} {time.time() - start:.0f}s")
            if args.state is not None and step % args.save_every == 0:
                save_state(args.state, model, optimizer, step, log_lines)
        test_acc = accuracy(model, test_x.to(device), test_y.to(device), args.img_size)
        log(f"epoch {epoch}: test top-1 {test_acc:.4f}")
        if args.state is not None:
            save_state(args.state, model, optimizer, step, log_lines)
    if test_acc != test_acc:  # resumed at the very end: measure once more
        test_acc = accuracy(model, test_x.to(device), test_y.to(device), args.img_size)
    save(model.cpu(), args, test_acc, args.out, log_lines)
    print(f"wrote {args.out}: test top-1 {test_acc:.4f} after {args.epochs} epochs, {time.time() - start:.0f}s")


if __name__ == "__main__":
    run_script(main)
