"""Keep freed memory in the process while cait times models on the CPU.

glibc's malloc serves large blocks with mmap and hands them back to the kernel when they are
freed, so every CPU forward of a ViT page-faults its activations in afresh: kernel time that
grows with the activations' size, and timings that jump between two modes as the heap is
trimmed or not. On 2 cores it cost DeiT-S at batch 64 a seventh of its forward (4.03 s against
3.44 s kept, 1.1 s of it kernel time; benchmarks/results/allocator_cpu.md), and it was most of the planner's error: the block table, timed on warm tensors,
never saw it, and a pruned model pays less of it than its width says
(benchmarks/results/planner_accuracy_cpu.md).

PyTorch's CUDA caching allocator, ONNX Runtime's arena and jemalloc all keep freed memory for the
next request; two mallopt settings make glibc do the same: no mmap for large blocks (they come
from the heap, and glibc still falls back to mmap when the heap cannot grow), and no trimming of
the heap's top. The process keeps its peak memory from then on, as those allocators do.

This is a setting of the process, like its thread count; cait makes it before it times anything
(`keep_freed_memory`), and for the whole of a compress run, so its CPU training runs alike. CAIT_SYSTEM_MALLOC=1 leaves malloc as it is. Elsewhere than glibc (macOS,
musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import os

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest heap top kept


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process; True when it took effect (idempotent)."""
    if os.environ.get("CAIT_SYSTEM_MALLOC") == "1":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def _glibc():
    """The process's own C library if it is glibc (it has mallopt and says its version), else None."""
    libc = ctypes.CDLL(None)  # the symbols already loaded into this process: its C library's among them
    try:
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        libc.mallopt  # noqa: B018
    except AttributeError:
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
