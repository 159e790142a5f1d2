"""Training JPEGs decoded on the device: loader workers read bytes, the device decodes a batch at once.

At several thousand images/s, decoding JPEGs on the host's cores is the limit (PIL decodes
some 250-400 ImageNet-sized JPEGs a second per core). Here the workers only read files;
`torchvision.io.decode_jpeg(list, device=...)` decodes the whole batch (nvJPEG on CUDA,
libjpeg on the CPU, where the same code is tested), then resizing, cropping, flipping and
normalising run on the device. Batches are still drawn by StepBatches: same images, same
order, same resume. Each image's crop and flip are seeded by (seed, step, its position in
the global batch), as on the CPU path, though the draws differ from PIL's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ...errors import CaitError
from .batches import Key, StepBatches, step_seed
from .sources import ImageFiles, WithoutLabels, collate_skipping

DECODES = ("auto", "cpu", "gpu")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
TRAIN_SCALE, TRAIN_RATIO = (0.6, 1.0), (3 / 4, 4 / 3)  # sources.train_transform's crop

Encoded = Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor, int]  # bytes, labels, positions, skipped


class JpegBytes(Dataset):
    """A JPEG file's bytes (uint8), its label and its position in the global batch; None if unreadable."""

    wants_key = True  # SeededSamples hands it the whole (step, position, index) key

    def __init__(self, items: Sequence[Tuple[str, int]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Key):
        _, position, index = key
        path, label = self.items[index]
        try:  # plain Python: torchvision.io.read_file hung in forked DataLoader workers here (torchvision 0.29)
            with open(path, "rb") as file:
                return torch.frombuffer(bytearray(file.read()), dtype=torch.uint8), label, position
        except OSError:
            return None


def jpeg_bytes_of(train: Dataset) -> Optional[JpegBytes]:
    """The bytes of `train`'s files when it is a folder of JPEGs only (labels as `train` gives them), else None."""
    unlabelled = isinstance(train, WithoutLabels)
    files = train.dataset if unlabelled else train
    if not isinstance(files, ImageFiles) or not files.items:
        return None
    if not all(path.lower().endswith(JPEG_EXTENSIONS) for path, _ in files.items):
        return None
    return JpegBytes([(path, -1 if unlabelled else label) for path, label in files.items])


def collate_bytes(samples: Sequence) -> Encoded:
    kept = [s for s in samples if s is not None]
    return ([s[0] for s in kept], torch.tensor([s[1] for s in kept], dtype=torch.long),
            torch.tensor([s[2] for s in kept], dtype=torch.long), len(samples) - len(kept))


def wants_device_decode(decode: str, device: torch.device, train: Dataset) -> bool:
    """decode "gpu" (any device: the decode runs where training does), or "auto" on CUDA for a JPEG folder."""
    if decode == "auto":
        return device.type == "cuda" and jpeg_bytes_of(train) is not None
    return decode == "gpu"


@dataclass
class DeviceDecode:
    """StepBatches' `finish`: decode a step's bytes on the device into normalised images."""

    data_cfg: Dict[str, Any]  # sources.resolve_data_config: input_size, interpolation, crop_pct, mean, std
    augment: bool
    seed: int

    def __call__(self, encoded: Encoded, step: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, int]:
        data, labels, positions, skipped = encoded
        images, readable = decode_all(data, device)
        skipped += len(data) - len(images)
        if not images:
            return torch.empty(0, device=device), labels[:0].to(device), skipped
        shaped = [self.shape(image, step, int(p)) for image, p in zip(images, positions[readable])]
        return self.normalise(torch.stack(shaped)), labels[readable].to(device, non_blocking=True), skipped

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.data_cfg["input_size"][-2:])

    @property
    def interpolation(self) -> InterpolationMode:
        return InterpolationMode(self.data_cfg.get("interpolation", "bilinear"))

    def shape(self, image: torch.Tensor, step: int, position: int) -> torch.Tensor:
        """(3, H, W) float in 0-255: a seeded random resized crop and flip, or timm's eval resize and centre crop."""
        image = image.float()
        if self.augment:
            return self._augmented(image, step_seed(self.seed, step, position))
        crop_pct = self.data_cfg.get("crop_pct") or 1.0
        scale = tuple(math.floor(side / crop_pct) for side in self.size)  # as timm's transforms_imagenet_eval
        resized = TF.resize(image, [scale[0]] if scale[0] == scale[1] else list(scale),
                            interpolation=self.interpolation, antialias=True)
        return TF.center_crop(resized, list(self.size)).clamp_(0, 255)

    def _augmented(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        # torchvision's get_params draws from the global RNG: fork it so the crop is seeded and nothing leaks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            top, left, height, width = RandomResizedCrop.get_params(image, list(TRAIN_SCALE), list(TRAIN_RATIO))
            flip = bool(torch.rand(1) < 0.5)
        crop = TF.resized_crop(image, top, left, height, width, list(self.size), interpolation=self.interpolation,
                               antialias=True).clamp_(0, 255)
        return TF.horizontal_flip(crop) if flip else crop

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return TF.normalize(images / 255, list(self.data_cfg["mean"]), list(self.data_cfg["std"]))


def decode_all(data: List[torch.Tensor], device: torch.device) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Decode a batch at once (RGB); if that fails, one by one, dropping what does not decode.
    Returns the images and a bool mask of which inputs they are."""
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device)), torch.ones(len(data), dtype=torch.bool)
    except RuntimeError:
        pass
    images, readable = [], torch.zeros(len(data), dtype=torch.bool)
    for i, one in enumerate(data):
        try:
            images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            readable[i] = True
        except RuntimeError:
            continue
    return images, readable


def device_decoded(decode: str, device: torch.device, train: Dataset, data_cfg: Dict[str, Any],
                   augment: bool = False, seed: int = 0) -> Optional[Tuple[JpegBytes, Callable, DeviceDecode]]:
    """(dataset, collate, finish) for StepBatches when images are to be decoded on `device`, else None.
    decode "gpu" on data that is not all JPEG files is refused."""
    if not wants_device_decode(decode, device, train):
        return None
    files = jpeg_bytes_of(train)
    if files is None:
        raise CaitError("--decode gpu decodes JPEG files; this data has other kinds of images (use --decode cpu)")
    return files, collate_bytes, DeviceDecode(data_cfg, augment, seed)


def training_batches(train: Dataset, data_cfg: Dict[str, Any], *, batch_size: int, seed: int, workers: int,
                     device: torch.device, decode: str = "cpu", augment: bool = False, rank: int = 0,
                     world: int = 1) -> StepBatches:
    """The batches `cait compress` trains on: `train` drawn by step, decoded by `workers` loader
    processes, or read by them and decoded on `device` when `decode` asks for it (device_decoded).
    `batch_size` is per process, `rank`'s share of a global batch of batch_size x world."""
    on_device = device_decoded(decode, device, train, data_cfg, augment, seed)
    dataset, collate, finish = on_device or (train, collate_skipping, None)
    return StepBatches(dataset, batch_size, seed, collate, workers=workers, pin_memory=True, rank=rank, world=world,
                       finish=finish)
