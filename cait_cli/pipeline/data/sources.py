"""Images for calibration, fine-tuning and evaluation.

A data source is an ImageFolder root with train/ and val/, a single ImageFolder
(class subfolders), a flat folder of unlabelled images (label -1), or a dataset
name timm's `create_dataset` knows. Unreadable images are skipped and counted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import create_transform
from timm.data import resolve_data_config as timm_data_config
from torch.utils.data import DataLoader, Dataset

from ...errors import CaitError, first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def resolve_data_config(model: torch.nn.Module) -> Dict[str, Any]:
    """Input size, interpolation, crop and mean/std the model was trained with.

    The input size is the one the model is built for: timm's pretrained config keeps the
    default of the architecture even when the model was created with another img_size.
    """
    cfg = timm_data_config({}, model=model)
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None):
        cfg["input_size"] = (embed.proj.in_channels, *embed.img_size)
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if names and len(names) == getattr(model, "num_classes", None):
        cfg["label_names"] = list(names)
    return cfg


def eval_transform(data_cfg: Dict[str, Any]) -> Callable:
    return create_transform(**{k: v for k, v in data_cfg.items() if k != "label_names"}, is_training=False)


def train_transform(data_cfg: Dict[str, Any]) -> Callable:
    """Light augmentation: random resized crop (scale 0.6-1) and horizontal flip."""
    return create_transform(data_cfg["input_size"], is_training=True, scale=(0.6, 1.0), hflip=0.5,
                            color_jitter=None, auto_augment=None, re_prob=0.0,
                            interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"])


class ImageFiles(Dataset):
    """(image, label) pairs from files; an unreadable file gives None (skipped by the collate)."""

    def __init__(self, items: Sequence[Tuple[str, int]], transform: Callable,
                 classes: Optional[List[str]] = None) -> None:
        self.items, self.transform, self.classes = list(items), transform, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label
        except (OSError, ValueError, SyntaxError):
            return None


class TimmDataset(Dataset):
    """A timm dataset with labels as ints (any failure to decode gives None)."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
        except (OSError, ValueError):
            return None
        return self.transform(image.convert("RGB")), int(label) if label is not None else -1


def collate_skipping(samples: Sequence) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; report how many were dropped."""
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([s[0] for s in kept])
    labels = torch.tensor([s[1] for s in kept], dtype=torch.long)
    return images, labels, skipped


class Batches:
    """Iterate (images, labels) over a DataLoader of collate_skipping; count skipped images (those of the
    latest pass: every pass reads the same images, so counting across passes would count each again)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.skipped = loader, 0

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = 0
        for images, labels, skipped in self.loader:
            self.skipped += skipped
            if len(images):
                yield images, labels


@dataclass
class DataBundle:
    train: Dataset
    val: Optional[Batches]
    classes: Optional[List[str]]
    labelled: bool  # the labels are the model's classes: cross-entropy and top-1/top-5 apply
    why_unlabelled: Optional[str] = None  # one line, when there are classes but they are not the model's


class WithoutLabels(Dataset):
    """A dataset whose labels are dropped (-1): its classes are not the model's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.classes = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return None if sample is None else (sample[0], -1)


def labels_belong(classes: Optional[Sequence[str]], label_names: Optional[Sequence[str]],
                  num_classes: Optional[int]) -> Optional[str]:
    """None when the data's classes are the model's classes, else one line saying why not.

    They are when the folder names are the model's label names or, for a model that lists
    none, when there are exactly num_classes of them (ImageNet synset folders sort into
    timm's class order). Anything else would train the head towards the wrong classes.
    """
    if classes is None:
        return "the dataset names no classes, so its labels are ignored: distillation only, top-1/top-5 not applicable"
    if label_names:
        if sorted(classes) == sorted(label_names):
            return None
        return (f"the {len(classes)} class folders are not the model's {len(label_names)} label names, "
                "so the labels are ignored: distillation only, top-1/top-5 not applicable")
    if num_classes is None or len(classes) == num_classes:
        return None
    return (f"the data has {len(classes)} classes and the model {num_classes}, so the labels are ignored: "
            "distillation only, top-1/top-5 not applicable")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_dir(path: Path) -> List[os.DirEntry]:
    try:
        return sorted(os.scandir(path), key=lambda e: e.name)
    except PermissionError as err:
        raise CaitError(f"cannot read {path}: permission denied") from err
    except OSError as err:
        raise CaitError(f"cannot read {path}: {err.strerror or err}") from err


def _class_folder_items(root: Path, label_names: Optional[Sequence[str]] = None
                        ) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Items of class subfolders. Labels follow the model's label names when the folders are
    exactly those names (a model's class order is rarely alphabetical), else folder order."""
    classes = [e.name for e in _list_dir(root) if e.is_dir() and not e.name.startswith(".")]
    if label_names and sorted(classes) == sorted(label_names):
        classes = list(label_names)
    items = []
    for label, name in enumerate(classes):
        for dirpath, _, files in os.walk(root / name):
            items += [(os.path.join(dirpath, f), label) for f in sorted(files) if _is_image(f)]
    return items, classes


def scan_folder(root: Path, label_names: Optional[Sequence[str]] = None
                ) -> Tuple[List[Tuple[str, int]], Optional[List[str]]]:
    """Items of a folder: class subfolders (labelled) or loose images (label -1)."""
    entries = _list_dir(root)
    loose = [(e.path, -1) for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        return loose, None
    items, classes = _class_folder_items(root, label_names)
    if not items:
        raise CaitError(f"no images found in {root} (expected class subfolders or image files: "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    return items, classes


def _timm_dataset(name: str, split: str) -> Dataset:
    from timm.data import create_dataset

    root = os.environ.get("CAIT_DATA", os.path.expanduser("~/.cache/cait/data"))
    try:
        return create_dataset(name, root=root, split=split, download=False)
    except Exception as err:  # timm raises many kinds; one line for the user
        raise CaitError(f"{name!r} is neither a folder nor a dataset timm can open ({first_line(err)})") from err


def dataset_from(source: str, transform: Callable, split: str = "train",
                 label_names: Optional[Sequence[str]] = None) -> Dataset:
    """A dataset from a folder path or a timm dataset name."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CaitError(f"{path} is not a folder of images")
        items, classes = scan_folder(path, label_names)
        return ImageFiles(items, transform, classes)
    if "/" in source and not source.startswith(("torch/", "hfds/", "tfds/", "wds/", "hfids/")):
        raise CaitError(f"data folder {path} does not exist")
    return TimmDataset(_timm_dataset(source, split), transform)


def split_roots(source: str) -> Tuple[str, Optional[str]]:
    """(train, val) sources: ROOT/train and ROOT/val when both exist, else (ROOT, None)."""
    path = Path(source).expanduser()
    if (path / "train").is_dir():
        return str(path / "train"), (str(path / "val") if (path / "val").is_dir() else None)
    return source, None


def loader(dataset: Dataset, batch_size: int, workers: int) -> Batches:
    return Batches(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                              collate_fn=collate_skipping, persistent_workers=False))


def open_data(source: str, data_cfg: Dict[str, Any], *, val_source: Optional[str] = None, batch_size: int,
              workers: int = 0, seed: int = 0, train_augment: bool = False,
              max_val: Optional[int] = None, num_classes: Optional[int] = None) -> DataBundle:
    """Training images (a Dataset; batches are drawn by step) and held-out images (if any).

    With `num_classes` (the model's), labels that are not the model's classes are dropped
    (see labels_belong) and `why_unlabelled` says so.
    """
    train_root, val_root = split_roots(source)
    names = data_cfg.get("label_names")
    train = dataset_from(train_root, train_transform(data_cfg) if train_augment else eval_transform(data_cfg),
                         label_names=names)
    val_root = val_source or val_root
    val = None
    if val_root is not None:
        val_set = dataset_from(val_root, eval_transform(data_cfg), split="validation", label_names=names)
        _check_same_classes(train, val_set, val_root)
        if max_val is not None and len(val_set) > max_val:
            val_set = _subset(val_set, max_val, seed)
    classes = getattr(train, "classes", None)
    why = _why_labels_are_dropped(train, names, num_classes)
    if why is not None:
        train = WithoutLabels(train)
        val_set = WithoutLabels(val_set) if val_root is not None else None
    if val_root is not None:
        val = loader(val_set, batch_size, workers)
    return DataBundle(train, val, classes, labelled=why is None and classes is not None, why_unlabelled=why)


def _why_labels_are_dropped(train: Dataset, label_names: Optional[Sequence[str]],
                            num_classes: Optional[int]) -> Optional[str]:
    if num_classes is None or (isinstance(train, ImageFiles) and train.classes is None):
        return None  # no model to compare with, or loose images (unlabelled already)
    return labels_belong(getattr(train, "classes", None), label_names, num_classes)


def _check_same_classes(train: Dataset, val: Dataset, val_root: str) -> None:
    a, b = getattr(train, "classes", None), getattr(val, "classes", None)
    if a is not None and b is not None and list(a) != list(b):
        raise CaitError(f"the classes of {val_root} differ from the training classes")


def _subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    subset = torch.utils.data.Subset(dataset, sorted(order.tolist()))
    subset.classes = getattr(dataset, "classes", None)
    return subset


def eval_loader(source: str, data_cfg: Dict[str, Any], batch_size: int, workers: int = 0
                ) -> Tuple[Batches, Optional[List[str]]]:
    """Held-out images for `cait eval`: ROOT/val if there is one, else ROOT itself."""
    path = Path(source).expanduser()
    root = str(path / "val") if (path / "val").is_dir() else source
    dataset = dataset_from(root, eval_transform(data_cfg), split="validation", label_names=data_cfg.get("label_names"))
    return loader(dataset, batch_size, workers), getattr(dataset, "classes", None)
