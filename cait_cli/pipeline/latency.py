"""A latency model of one ViT on the device at hand, calibrated by measurement.

FLOPs predict speed badly on small shapes, so the planner times the two halves
of a block (attention, MLP) at a few token counts and kept-channel fractions and
interpolates between them. Tables are cached per device, threads, batch size,
precision and block shape, so a second run plans without measuring.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from ..method.cdcp import attach_gates, detach_gates, set_uniform_keep
from ..method.atme import TokenMerge
from ..method.model import patch_vit
from ..method.tokens import TokenState
from .measure import device_name, synchronize
from ..method.slim import slim_block

KEEPS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class LatencyTable:
    """Milliseconds per batch of the attention and MLP halves of one block."""

    key: str
    tokens: List[int]  # ascending
    keeps: List[float]  # ascending
    attn_ms: List[List[float]]  # [token index][keep index]
    mlp_ms: List[List[float]]
    merge_ms: List[float]  # [token index]: one merge step, with the class-attention it needs
    fixed_ms: float  # patch embedding, final norm and head

    def attn(self, tokens: int, keep: float) -> float:
        return _interp2(self.tokens, self.keeps, self.attn_ms, tokens, keep)

    def mlp(self, tokens: int, keep: float) -> float:
        return _interp2(self.tokens, self.keeps, self.mlp_ms, tokens, keep)

    def merge(self, tokens: int) -> float:
        return max(0.0, _interp1(self.tokens, self.merge_ms, tokens))


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear, extrapolating linearly beyond the ends."""
    i = max(1, min(len(xs) - 1, next((j for j, v in enumerate(xs) if v >= x), len(xs) - 1)))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp2(xs, ys, grid, x: float, y: float) -> float:
    column = [_interp1(ys, row, y) for row in grid]
    return max(0.0, _interp1(xs, column, x))


def best_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Fastest wall time of fn() in milliseconds: the least disturbed by other processes."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def table_key(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype) -> str:
    block = model.blocks[0]
    shape = (block.attn.qkv.in_features, block.attn.num_heads, block.attn.qkv.out_features,
             block.mlp.fc1.out_features, model.num_prefix_tokens, tuple(model.patch_embed.grid_size),
             len(model.blocks), model.num_classes)
    raw = f"{device_name(device)}|{torch.__version__}|{torch.get_num_threads()}|{batch}|{dtype}|{shape}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("CAIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "cait")
    return Path(base).expanduser() / "latency"


def calibrate_latency(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype = torch.float32,
                      cache_dir: Optional[Path] = None, repeats: int = 5) -> LatencyTable:
    """Measure (or read from the cache) the latency table of `model`'s block shape."""
    key = table_key(model, device, batch, dtype)
    cache_file = (cache_dir or default_cache_dir()) / f"{key}.json"
    if cache_file.is_file():
        try:
            return LatencyTable(**json.loads(cache_file.read_text()))
        except (ValueError, TypeError):
            pass  # a corrupt cache entry is measured again
    table = _measure_table(model, device, batch, dtype, key, repeats)
    _write_cache(cache_file, table)
    return table


def _write_cache(path: Path, table: LatencyTable) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(table)))
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation


def _token_grid(model: nn.Module) -> List[int]:
    h, w = model.patch_embed.grid_size
    prefix = model.num_prefix_tokens
    counts = {prefix + max(1, (h * w) // (2 ** k)) for k in range(0, 7)}
    return sorted(counts)


@torch.inference_mode()
def _measure_table(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype,
                   key: str, repeats: int) -> LatencyTable:
    probe = patch_vit(_one_block_vit(model, device, dtype))
    block = probe.blocks[0]
    dim = block.attn.qkv.in_features
    tokens = _token_grid(model)
    attn_ms, mlp_ms, merge_ms = [], [], []
    for n in tokens:
        x = torch.randn(batch, n, dim, device=device, dtype=dtype)
        attn_row, mlp_row = [], []
        for keep in KEEPS:
            sliced = _sliced_block(block, keep)
            attn_row.append(best_ms(lambda: sliced.attn(sliced.norm1(x), None, False), device, repeats=repeats))
            mlp_row.append(best_ms(lambda: sliced.mlp(sliced.norm2(x)), device, repeats=repeats))
        attn_ms.append(_running_max(attn_row))
        mlp_ms.append(_running_max(mlp_row))
        merge_ms.append(_merge_ms(block, x, probe.num_prefix_tokens, device, repeats))
    fixed = _fixed_ms(probe, device, dtype, batch, repeats)
    return LatencyTable(key, tokens, list(KEEPS), _monotone_rows(attn_ms), _monotone_rows(mlp_ms),
                        _running_max(merge_ms), fixed)


def _merge_ms(block: nn.Module, x: torch.Tensor, prefix: int, device: torch.device, repeats: int) -> float:
    """Extra time of a block that merges: class-token attention row plus one merge step."""
    patches = x.shape[1] - prefix
    if patches < 2:
        return 0.0
    state = TokenState(x=x, size=None, grid=(1, patches), num_prefix=prefix)
    merge = TokenMerge(["w"]).to(device, x.dtype)
    importance = torch.rand(x.shape[0], patches, device=device, dtype=x.dtype)
    plain = best_ms(lambda: block.attn(x, None, False), device, repeats=repeats)
    merging = best_ms(lambda: (block.attn(x, None, True), merge(state, importance)), device, repeats=repeats)
    return max(0.0, merging - plain)


def _running_max(values: List[float]) -> List[float]:
    """Latency cannot fall as work grows: smooth timing noise away."""
    out, top = [], 0.0
    for v in values:
        top = max(top, v)
        out.append(top)
    return out


def _monotone_rows(grid: List[List[float]]) -> List[List[float]]:
    columns = [_running_max(list(col)) for col in zip(*grid)]
    return [list(row) for row in zip(*columns)]


def _one_block_vit(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` with only its first block (cheap to copy and to time)."""
    blocks = model.blocks
    model.blocks = nn.Sequential()
    try:
        probe = copy.deepcopy(model)
    finally:
        model.blocks = blocks
    probe.blocks = nn.Sequential(copy.deepcopy(blocks[0]))
    return probe.to(device, dtype).eval()


def _sliced_block(block: nn.Module, keep: float) -> nn.Module:
    sliced = copy.deepcopy(block)
    if keep >= 1.0:
        return sliced
    holder = nn.Module()
    holder.blocks = nn.ModuleList([sliced])
    attach_gates(holder)
    set_uniform_keep(holder, keep)
    slim_block(sliced)
    detach_gates(holder)
    return sliced


def _fixed_ms(probe: nn.Module, device: torch.device, dtype: torch.dtype, batch: int, repeats: int) -> float:
    """Time of the model without its blocks: patch embedding, norms, head."""
    images = torch.randn(batch, 3, *probe.patch_embed.img_size, device=device, dtype=dtype)
    blocks = probe.blocks
    probe.blocks = nn.Sequential()
    try:
        return best_ms(lambda: probe(images), device, repeats=repeats)
    finally:
        probe.blocks = blocks
