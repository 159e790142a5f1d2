"""Data-parallel runs under torchrun: the one module that speaks torch.distributed.

`torchrun --nproc_per_node N -m cait_cli compress ...` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; `join()` turns them into a Cluster (NCCL on CUDA, gloo
on CPU). A process started without torchrun is a cluster of one, and every helper
here is then a no-op, so the pipeline reads the same either way. Rank 0 alone plans,
measures and writes; `on_main` runs such work there and hands its result (or its
one-line error) to every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import CaitError

T = TypeVar("T")
SOLO_WORK_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world: int = 1
    local_world: int = 1
    owns_group: bool = False  # this process group was started by join() and ends with leave()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or a process without torchrun (for the CLI, before any group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device: torch.device) -> tuple[Cluster, torch.device]:
    """The cluster this process belongs to, and its device (cuda:LOCAL_RANK under torchrun)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and device.index is None:
        # set_device needs an index: "cuda" alone raises ValueError there
        grouped = dist.is_initialized() or launched_by_torchrun()
        device = torch.device("cuda", local_rank if grouped else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return Cluster(dist.get_rank(), dist.get_world_size(), local_world), device
    if not launched_by_torchrun():
        return Cluster(), device
    try:
        # the other ranks wait while rank 0 alone times blocks, plans and measures: minutes, not seconds
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=SOLO_WORK_TIMEOUT)
    except (RuntimeError, ValueError) as err:
        raise CaitError(f"cannot join the torchrun group: {str(err).splitlines()[0]}") from err
    return Cluster(dist.get_rank(), dist.get_world_size(), local_world, owns_group=True), device


def leave(cluster: Cluster) -> None:
    if cluster.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(cluster: Cluster, value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not cluster.parallel:
        return value
    box = [value if cluster.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(cluster: Cluster, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 alone; every rank returns its result or raises its CaitError."""
    result, error = None, None
    if cluster.is_main:
        try:
            result = work()
        except CaitError as err:
            if not cluster.parallel:
                raise
            error = (type(err), str(err))
    result, error = broadcast(cluster, (result, error))
    if error is not None:
        kind, message = error
        raise kind(message)
    return result


def barrier(cluster: Cluster) -> None:
    if cluster.parallel:
        dist.barrier()


def copy_from_main(cluster: Cluster, tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors` in place with rank 0's values (e.g. CDCP scores before a top-k)."""
    if cluster.parallel:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def data_parallel(cluster: Cluster, model: nn.Module, device: torch.device) -> nn.Module:
    """`model` as DistributedDataParallel (gradients averaged over ranks), or itself alone."""
    if not cluster.parallel:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def total(cluster: Cluster, count: int) -> int:
    """The sum of an integer over all ranks (e.g. skipped images)."""
    if not cluster.parallel:
        return count
    value = torch.tensor([count], dtype=torch.long)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value)
    return int(value.item())


def default_workers() -> int:
    """Data workers per process: this machine's CPU cores shared among its processes, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def main_first(cluster: Cluster, work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the others (e.g. a download they then find in the cache)."""
    done = []
    on_main(cluster, lambda: done.append(work()))
    return done[0] if cluster.is_main else work()
