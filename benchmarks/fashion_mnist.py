"""Fashion-MNIST from its IDX files (the format of MNIST and Fashion-MNIST, optionally gzipped),
for the examples and benchmarks that train on it: cait itself reads image folders and timm datasets."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Tuple

import numpy as np

from cait_cli.errors import CaitError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle_boot")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file as an array: magic 0x0000TTNN (TT dtype code, NN dims), dims, data."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise CaitError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise CaitError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != dtype.itemsize * int(np.prod(dims)):
        raise CaitError(f"{path} is truncated: its header promises {dims} values of {dtype}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def load_fashion_mnist(root: str | Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise CaitError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise CaitError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels in {split}")
    return images, labels
