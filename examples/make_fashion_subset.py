"""Write a small stratified Fashion-MNIST subset as PNGs in ImageFolder layout.

    python examples/make_fashion_subset.py --out examples/fashion_mnist

OUT/train/<class>/<index>.png come from the official training split, OUT/val/... from
the official test split; the same seed picks the same images. --heldout-per-class N adds
OUT/heldout/...: N more images of each class from the training split, none of them in train/,
for choosing settings without looking at the test split (train/ and val/ stay as they were).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ holds the Fashion-MNIST reader and the script harness

from benchmarks.fashion_mnist import (  # noqa: E402
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
)
from benchmarks.harness import run_script  # noqa: E402
from cait_cli.atomic import atomic_directory  # noqa: E402


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of every class, sorted."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for name in FASHION_MNIST_CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[i], mode="L").save(folder / FASHION_MNIST_CLASSES[labels[i]] / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEBIAN_FASHION_MNIST)
    parser.add_argument("--out", type=Path, default=Path("examples/fashion_mnist"))
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--heldout-per-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with atomic_directory(args.out, overwrite=True) as tmp:
        picked = {}
        for split, source, per_class in (("train", "train", args.train_per_class), ("val", "test", args.val_per_class)):
            images, labels = load_fashion_mnist(args.root, source)
            picked[split] = stratified(labels, per_class, rng)
            write_split(tmp / split, images, labels, picked[split])
        if args.heldout_per_class:  # drawn after train/ and val/, so those are the images the seed always picked
            images, labels = load_fashion_mnist(args.root, "train")
            rest = np.setdiff1d(np.arange(len(labels)), picked["train"])
            write_split(tmp / "heldout", images, labels, rest[stratified(labels[rest], args.heldout_per_class, rng)])
        heldout = f" --heldout-per-class {args.heldout_per_class}" if args.heldout_per_class else ""
        (tmp / "README.md").write_text(README.format(cmd=f"python examples/make_fashion_subset.py --out {args.out} "
                                                        f"--train-per-class {args.train_per_class} --val-per-class "
                                                        f"{args.val_per_class}{heldout} --seed {args.seed}"))
    print(f"wrote {args.out}")


README = """# Fashion-MNIST subset

A stratified subset of Fashion-MNIST (Zalando Research, MIT licence; Xiao, Rasul and Vollgraf,
2017), read from the IDX files of Debian's `dataset-fashion-mnist` package with cait's own IDX
reader: 28x28 grey images in ImageFolder layout, `train/` from the official training split and
`val/` from the official test split, the same number of images in every class; `heldout/`, where
it was asked for, from the training split, none of its images in `train/`.

Made with:

    {cmd}
"""


if __name__ == "__main__":
    run_script(main)
