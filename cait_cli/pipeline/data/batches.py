"""Training batches by step, decoded by DataLoader workers.

The batch of step s is fixed by (seed, s): its images are a slice of the seeded
permutation of epoch s // steps_per_epoch, and each image's augmentation is seeded
by (seed, s, its position in the batch). So a resumed run sees the batches it would
have seen, whatever the number of workers, and N processes that each take 1/N of a
global batch see together what one process taking all of it sees.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ...errors import CaitError

Key = Tuple[int, int, int]  # (step, position in the global batch, dataset index)
Batch = Tuple[torch.Tensor, torch.Tensor, int]  # images, labels, how many images were unreadable
Finish = Callable[[object, int, torch.device], Batch]  # (collated, step, device) -> a Batch on device


def to_device(collated: Batch, step: int, device: torch.device) -> Batch:
    """The default finish: the workers decoded the images, move them."""
    images, labels, skipped = collated
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True), skipped


def step_seed(seed: int, step: int, position: int = -1) -> int:
    return (seed * 1_000_003 + step) * 100_003 + position + 1


class SeededSamples(Dataset):
    """dataset[index], with torch's and Python's RNGs seeded by (seed, step, position) first.

    timm's training transforms draw from both (crop from `random`, flip from torch).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key):
        step, position, index = key
        torch.manual_seed(step_seed(self.seed, step, position))
        random.seed(step_seed(self.seed, step, position))
        return self.dataset[key] if getattr(self.dataset, "wants_key", False) else self.dataset[index]


class StepSampler(Sampler):
    """Yields the keys of steps start..stop-1: one list per step, this process's share."""

    def __init__(self, batches: "StepBatches", start: int, stop: int) -> None:
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[List[Key]]:
        for step in range(self.start, self.stop):
            yield self.batches.keys(step)


class StepBatches:
    """Batches by step; with `world` processes, each takes its `rank`'s part of the global batch.

    batch_size is per process (as in timm's train.py): the global batch is batch_size * world.
    `finish` turns a collated batch into images on the device (default: move them there;
    device_decode.DeviceDecode: decode JPEG bytes there).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, collate: Callable[[Sequence], object], *,
                 workers: int = 0, pin_memory: bool = False, rank: int = 0, world: int = 1,
                 finish: Optional[Finish] = None) -> None:
        if len(dataset) == 0:
            raise CaitError("the training data holds no images")
        self.samples, self.seed, self.collate = SeededSamples(dataset, seed), seed, collate
        self.workers, self.pin_memory, self.rank, self.world = workers, pin_memory, rank, world
        self.skipped, self.finish = 0, finish or to_device
        self._order: Tuple[int, torch.Tensor] | None = None  # (epoch, its shuffled order), made once an epoch
        self.batch_size = min(batch_size * world, len(dataset))  # the global batch
        self.per_epoch = max(1, len(dataset) // self.batch_size)

    @property
    def dataset(self) -> Dataset:
        return self.samples.dataset

    def indices(self, step: int) -> torch.Tensor:
        """Dataset indices of the global batch of `step` (batch_size * world,)."""
        epoch, slot = divmod(step, self.per_epoch)
        return self.order(epoch)[slot * self.batch_size:(slot + 1) * self.batch_size]

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffled dataset indices. Kept: a shuffle costs time in proportion to the dataset
        (1.28M indices for ImageNet), and the sampler asks in the main process before every step."""
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=generator))
        return self._order[1]

    def keys(self, step: int, limit: int | None = None) -> List[Key]:
        """This process's part of step's batch; `limit`: the first `limit` images of the global batch."""
        indices = self.indices(step).tolist()
        positions = list(range(len(indices)))
        mine = positions[:limit] if limit is not None else torch.tensor_split(
            torch.tensor(positions), self.world)[self.rank].tolist()
        return [(step, p, indices[p]) for p in mine]

    def batch(self, step: int, limit: int | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One batch decoded here (no workers): e.g. the planner's scoring batch."""
        collated = self.collate([self.samples[k] for k in self.keys(step, limit)])
        return self._checked(step, self.finish(collated, step, torch.device("cpu")))

    def iterate(self, start: int, stop: int, device: torch.device) -> Iterator[Tuple[int, Tuple]]:
        """(step, (images, labels)) on `device` for steps start..stop-1, decoded ahead by the workers."""
        loader = DataLoader(self.samples, batch_sampler=StepSampler(self, start, stop), num_workers=self.workers,
                            collate_fn=self.collate, pin_memory=self.pin_memory and device.type == "cuda",
                            prefetch_factor=4 if self.workers else None)
        for step, collated in zip(range(start, stop), loader):
            images, labels = self._checked(step, self.finish(collated, step, device))
            torch.manual_seed(step_seed(self.seed, step))  # dropout and the like of this step
            yield step, (images, labels)

    def _checked(self, step: int, finished: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels, skipped = finished
        self.skipped += skipped
        if len(images) == 0:
            raise CaitError(f"every image of training batch {step} was unreadable")
        return images, labels
