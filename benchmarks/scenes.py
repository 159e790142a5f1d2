"""Fashion-MNIST scenes for the segmentation proof: several garments on one canvas, labelled per pixel.

A scene is a black square canvas with a few garments pasted at random places (later
ones on top), each scaled by an integer factor (2 by default, the scale the
bundled reference was trained at: 28 -> 56 pixels, bilinear). Every pixel where a garment
has ink (grey level >= `ink`) is labelled with that garment's class + 1; everything
else is background, 0. Train scenes come from the official training split, test
scenes from the test split; the same seed gives the same scenes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from benchmarks.fashion_mnist import load_fashion_mnist

BACKGROUND = 0
NUM_CLASSES = 11  # background + 10 garments


@dataclass(frozen=True)
class SceneConfig:
    size: int = 112  # canvas side in pixels
    min_garments: int = 2
    max_garments: int = 4
    scale: int = 2  # garments are 28 * scale pixels
    ink: int = 32  # grey level from which a garment pixel counts as the garment


def make_scenes(images: np.ndarray, labels: np.ndarray, count: int, cfg: SceneConfig,
                seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """`count` scenes from garments `images` (N, 28, 28) uint8 with `labels` (N,).

    Returns scenes (count, size, size) uint8 and masks (count, size, size) int64 in [0, 11).
    """
    rng = np.random.default_rng(seed)
    side = images.shape[1] * cfg.scale
    if side > cfg.size:
        raise ValueError(f"garments of {side} pixels do not fit a {cfg.size}-pixel scene")
    scenes = np.zeros((count, cfg.size, cfg.size), dtype=np.uint8)
    masks = np.full((count, cfg.size, cfg.size), BACKGROUND, dtype=np.int64)
    for scene, mask in zip(scenes, masks):
        for _ in range(rng.integers(cfg.min_garments, cfg.max_garments + 1)):
            pick = rng.integers(len(images))
            garment = upscale(images[pick], side)
            top, left = rng.integers(0, cfg.size - side + 1, size=2)
            ink = garment >= cfg.ink
            window = (slice(top, top + side), slice(left, left + side))
            scene[window][ink] = garment[ink]
            mask[window][ink] = labels[pick] + 1
    return scenes, masks


def upscale(image: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 garment resized bilinearly to side x side, as the reference's preprocessing does."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def load_scenes(root: str | Path, split: str, count: int, cfg: SceneConfig,
                seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scenes from the official `split` ("train" or "test") of the Fashion-MNIST IDX files in root."""
    images, labels = load_fashion_mnist(root, split)
    return make_scenes(images, labels, count, cfg, seed)
