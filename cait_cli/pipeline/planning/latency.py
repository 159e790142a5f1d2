"""A latency model of one ViT on the device at hand, calibrated by measurement.

FLOPs predict speed badly on small shapes, so the planner times the two halves of
a block (attention, MLP) at the token counts merge schedules produce and at kept
widths in the channel multiple the slimmed model will have, and interpolates
between them. Whole slimmed models are timed too: what the sums of block halves
miss of them is fitted as a scale of those sums and an overhead per forward (see
`fit_table`). The fit checks the table: a whole model far from its fitted
prediction means a disturbed block timing, and the halves are timed once more
(`retimed`). Tables are cached per device, threads, batch size, precision, channel
multiple and block shape, so a second run plans without measuring.

Cost stays in proportion to the model: at long token sequences the timing batch
shrinks so that every timed call handles at most `batch x 197` token rows (the
size of a 224-pixel ViT batch), and times are kept per image.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...method.atme import MergeStep, TokenMerge, alternating_schedule, grid_after
from ...method.base import token_counts
from ...method.cdcp import attach_gates, detach_gates
from ...method.cost import block_shapes
from ...method.gates import allowed_counts
from ...method.model import patch_vit
from ...method.slim import slim_block
from ...method.tokens import TokenState
from ...method.variants import compressed_variant
from ...method.widths import block_widths
from ..measuring.allocator import keep_freed_memory
from ..measuring.measure import (
    SpeedConfig,
    device_name,
    measure_throughput,
    speedup_estimate,
    synchronize,
)
from ..measuring.runtimes import block_runtime, captured

TABLE_VERSION = 13
MAX_MERGE_STEPS = 4  # the planner's candidate schedules merge at most this often
ATTN_POINTS = 8  # kept head widths timed (at most)
MLP_POINTS = 6  # kept MLP widths timed
ROW_TOKENS = 197  # a timed call handles at most batch x ROW_TOKENS token rows
MIN_KEEP = 0.125  # narrowest width timed, as a share of the full width (CDCP keeps at least this)
MIN_SPREAD = 0.05  # robust_line: fit models whose halves differ by less than this share of the largest: no slope
# a fit model further than this from its fitted prediction: the table is timed again, which doubles its
# cost (DeiT-S at batch 64: 160 s -> 335 s); three of six tables were timed twice in one run, and then
# predicted within 1.3-6.0% median (planner_accuracy_v13_cpu.md)
RETIME_ERROR = 0.06


@dataclass
class LatencyTable:
    """Milliseconds per image of one block's attention and MLP halves, measured."""

    key: str
    tokens: List[int]  # ascending: the token counts of successive merge steps
    attn_widths: List[int]  # ascending: kept q/k (= v) channels per head
    mlp_widths: List[int]  # ascending: kept MLP hidden units
    attn_ms: List[List[float]]  # [token index][attn width index]
    mlp_ms: List[List[float]]  # [token index][mlp width index]
    merge_ms: List[float]  # [token index]: one merge step, with the class-attention it needs
    fixed_ms: float  # patch embedding, final norm and head
    # fitted on whole models: time = fixed + overhead + scale x (block halves and merges)
    scale: float = 1.0
    overhead_ms: float = 0.0  # per forward, whatever the plan: what runs between the halves timed alone
    # the original model itself, timed with the fit models: every speedup the planner predicts is
    # against it, as every measurement is (None: a table that predicts its own baseline)
    baseline_ms: Optional[float] = None
    fit_error: float = 0.0  # the fit models' worst relative error against the fitted table
    block_timings: int = 1  # 2: the fit showed a disturbed table, the block halves were timed again (retimed)

    def attn(self, tokens: int, width: int) -> float:
        return _interp2(self.tokens, self.attn_widths, self.attn_ms, tokens, width)

    def mlp(self, tokens: int, width: int) -> float:
        return _interp2(self.tokens, self.mlp_widths, self.mlp_ms, tokens, width)

    def merge(self, tokens: int) -> float:
        return max(0.0, _interp1(self.tokens, self.merge_ms, tokens))

    def halves(self, counts: Sequence[Tuple[int, int]], widths: Sequence[Tuple[int, int]],
               merge_blocks: Sequence[int]) -> float:
        """Raw sum of a model's attention halves (with merges) and MLP halves, as timed alone.

        counts: per block (tokens into attention, into MLP); widths: per block (attention
        width per head, MLP hidden units); merge_blocks: the blocks that merge.
        """
        attn = sum(self.attn(n_in, a) for (n_in, _), (a, _) in zip(counts, widths))
        attn += sum(self.merge(counts[b][0]) for b in merge_blocks)
        return attn + sum(self.mlp(n_out, m) for (_, n_out), (_, m) in zip(counts, widths))

    def predict(self, counts: Sequence[Tuple[int, int]], widths: Sequence[Tuple[int, int]],
                merge_blocks: Sequence[int]) -> float:
        """Milliseconds per image of a model with these token counts, widths and merges."""
        return self.time_of(self.halves(counts, widths, merge_blocks))

    def time_of(self, halves: float) -> float:
        """Milliseconds per image of a model whose block halves sum to `halves` (as timed alone)."""
        return self.fixed_ms + self.overhead_ms + self.scale * halves


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear, extrapolating linearly beyond the ends."""
    if len(xs) == 1:
        return ys[0]
    i = max(1, min(len(xs) - 1, next((j for j, v in enumerate(xs) if v >= x), len(xs) - 1)))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp2(xs, ys, grid, x: float, y: float) -> float:
    column = [_interp1(ys, row, y) for row in grid]
    return max(0.0, _interp1(xs, column, x))


def table_key(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype, multiple: int,
              amp: bool = False, runtime: str = "eager") -> str:
    first = block_shapes(model)[0]  # of a timm ViT or Eva, or a CAIT model
    shape = (first.dim, first.heads, first.heads * (2 * first.qk + first.v),
             first.mlp, model.num_prefix_tokens, tuple(model.patch_embed.grid_size),
             len(model.blocks), model.num_classes)
    if first.mlp_matrices != 2:
        shape += (type(model).__name__, first.mlp_matrices)
    raw = (f"v{TABLE_VERSION}|{device_name(device)}|{torch.__version__}|{torch.get_num_threads()}|{batch}|{dtype}|"
           f"{multiple}|{shape}|{runtime}" + ("|bf16-autocast" if amp else ""))
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("CAIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "cait")
    return Path(base).expanduser() / "latency"


def calibrate_latency(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype = torch.float32,
                      cache_dir: Optional[Path] = None, repeats: int = 5, multiple: int = 1,
                      amp: bool = False, runtime: str = "eager") -> LatencyTable:
    """Measure (or read from the cache) the latency table of `model`'s block shape.

    multiple: the channel multiple of the widths CDCP will keep; widths are timed in it.
    amp: time under bf16 autocast (GPU), as compress measures the models it compares.
    runtime: what serves the model (runtimes.RUNTIMES): the whole models the table is fitted to
    run under it, the block halves under its cheap stand-in (runtimes.block_runtime).
    """
    amp = amp and device.type == "cuda"  # autocast to bf16 is GPU only: a CPU table is fp32 under either key
    key = table_key(model, device, batch, dtype, multiple, amp, runtime)
    cache_file = (cache_dir or default_cache_dir()) / f"{key}.json"
    if cache_file.is_file():
        try:
            return LatencyTable(**json.loads(cache_file.read_text()))
        except (ValueError, TypeError):
            pass  # a corrupt or outdated cache entry is measured again
    table = _measure_table(model, device, batch, dtype, key, repeats, multiple, amp, runtime)
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


def token_chain(model: nn.Module, steps: int = MAX_MERGE_STEPS) -> List[int]:
    """Token counts (prefix + patches) after 0, 1, ... `steps` alternating merge steps."""
    grid = tuple(model.patch_embed.grid_size)
    axes = [s.axis for s in alternating_schedule(range(steps), grid)]
    counts = {model.num_prefix_tokens + math.prod(grid_after(grid, axes[:k])) for k in range(steps + 1)}
    return sorted(counts)


def width_points(full: int, multiple: int, points: int) -> List[int]:
    """At most `points` kept widths from the narrowest CDCP keeps to `full`, in the multiple."""
    counts = [c for c in allowed_counts(full, multiple) if c >= math.ceil(MIN_KEEP * full)] or [full]
    if len(counts) <= points:
        return counts
    picks = {counts[round(i * (len(counts) - 1) / (points - 1))] for i in range(points)}
    return sorted(picks)


def timing_batch(batch: int, tokens: int) -> int:
    """Images per timed call: `batch`, fewer for long sequences (at most batch x ROW_TOKENS rows)."""
    return max(1, min(batch, math.ceil(batch * ROW_TOKENS / tokens)))


@torch.inference_mode()
def _measure_table(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype,
                   key: str, repeats: int, multiple: int, amp: bool, runtime: str) -> LatencyTable:
    keep_freed_memory()  # as every whole-model measurement runs (allocator.py)
    graphs = block_runtime(runtime, device) == "cuda-graphs"

    def time_blocks() -> LatencyTable:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=not graphs):
            return _block_table(model, device, batch, dtype, key, repeats, multiple, graphs)

    def time_whole(table: LatencyTable) -> FitModels:
        return _time_fit_models(table, model, batch, multiple, device, dtype, repeats, amp, runtime)

    table = time_blocks()
    whole = time_whole(table)
    fit_table(table, whole)
    if table.fit_error > RETIME_ERROR:
        table = retimed(table, time_blocks(), whole.pooled(time_whole(table)))
    return table


def retimed(table: LatencyTable, again: LatencyTable, whole: "FitModels") -> LatencyTable:
    """The table whose fit missed a whole model by more than RETIME_ERROR, timed a second time:
    every cell the faster of its two timings (the less disturbed one, as interleaved_best keeps
    the fastest repeat), fitted again to `whole`, the fit models with both timings' repeats
    (FitModels.pooled). A machine busy for a few seconds while one token count's row was timed
    inflated every cell of that row: the reference's unpruned merged plans were then predicted
    18-23% too slow, and the fit models showed it (a merged one 18% and 31% off). Quiet tables keep
    their fit models within 2-7.7% (planner_accuracy_v12_cpu.md, _v13_cpu.md); SigLIP at batch 2
    passed table v12's check (10%) at 9.9% and then mispredicted its pruned, unmerged plans by up
    to 15%, where an earlier table of the same model had them right."""
    faster = LatencyTable(
        table.key, table.tokens, table.attn_widths, table.mlp_widths,
        _cellwise_min(table.attn_ms, again.attn_ms), _cellwise_min(table.mlp_ms, again.mlp_ms),
        [min(a, b) for a, b in zip(table.merge_ms, again.merge_ms)], min(table.fixed_ms, again.fixed_ms),
        block_timings=table.block_timings + 1)
    fit_table(faster, whole)
    return faster


def _cellwise_min(grid: List[List[float]], other: List[List[float]]) -> List[List[float]]:
    """Two monotone grids' cell by cell minimum (monotone too)."""
    return [[min(a, b) for a, b in zip(row, row_again)] for row, row_again in zip(grid, other)]


def _block_table(model: nn.Module, device: torch.device, batch: int, dtype: torch.dtype,
                 key: str, repeats: int, multiple: int, graphs: bool = False) -> LatencyTable:
    """Block halves and merges timed alone, by token count and kept width (graphs: each call
    replayed from a CUDA graph)."""
    def timed(calls: List[Callable[[], object]]) -> List[float]:
        return interleaved_best([captured(fn, device) if graphs else fn for fn in calls], device, repeats=repeats)

    probe = patch_vit(_one_block_vit(model, device, dtype))
    block, prefix = probe.blocks[0], probe.num_prefix_tokens
    tokens = token_chain(model)
    attn_widths = width_points(block.attn.qk_dim, block.attn.channel_multiple(multiple), ATTN_POINTS)
    mlp_widths = width_points(block.mlp.fc2.in_features, multiple, MLP_POINTS)
    attn_blocks = [_sliced_block(block, w, block.mlp.fc2.in_features) for w in attn_widths]
    mlp_blocks = [_sliced_block(block, block.attn.qk_dim, w) for w in mlp_widths]
    attn_ms, mlp_ms, merge_ms = [], [], []
    for n in tokens:
        images = timing_batch(batch, n)
        x = torch.randn(images, n, block.attn.qkv.in_features, device=device, dtype=dtype)
        bias = _size_bias(n, device, dtype) if n < tokens[-1] else None  # merged tokens carry sizes
        rope = _rope_table(block, n - prefix)
        attn_calls = [partial(lambda b: b.attn(b.norm1(x), bias, False, rope), b) for b in attn_blocks]
        mlp_calls = [partial(lambda b: b.mlp(b.norm2(x)), b) for b in mlp_blocks]
        ms = [t / images for t in timed([*attn_calls, *mlp_calls, *_merge_calls(block, x, bias, rope, prefix, device)])]
        attn_ms.append(_running_max(ms[:len(attn_calls)]))
        mlp_ms.append(_running_max(ms[len(attn_calls):-2]))
        merge_ms.append(max(0.0, ms[-1] - ms[-2]))  # a merging block's attention less the plain one
    images = timing_batch(batch, tokens[-1])
    pixels = torch.randn(images, 3, *probe.patch_embed.img_size, device=device, dtype=dtype)
    probe.blocks = nn.Sequential()  # patch embedding, norms and head alone
    fixed = timed([lambda: probe(pixels)])[0] / images
    return LatencyTable(key, tokens, attn_widths, mlp_widths, _monotone_rows(attn_ms), _monotone_rows(mlp_ms),
                        _running_max(merge_ms), fixed)


def interleaved_best(calls: Sequence[Callable[[], object]], device: torch.device, warmup: int = 2,
                     repeats: int = 5) -> List[float]:
    """The fastest wall time of each call in milliseconds, the calls timed round-robin.

    The fastest of several runs is the one least disturbed by other processes; taking the runs
    round-robin (order reversed every other round) spreads a disturbed stretch of the machine over
    all the calls instead of letting it fall on every run of one (a width timed 30% slow in one of
    four tables, when each was timed in a row)."""
    times: List[List[float]] = [[] for _ in calls]
    order = list(enumerate(calls))
    for i in range(warmup + repeats):
        for j, fn in order if i % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times[j].append((time.perf_counter() - start) * 1e3)
    return [min(t) for t in times]


# Whole models the table is fitted on: (merge blocks as fractions of the depth, kept MAC share): the
# corners of what the planner proposes, and three where its plans for 1.5-2.5x lie (the median
# scale is then the scale of that region).
FIT_MODELS = (((), 1.0), ((), 0.45), ((0.25, 0.5), 1.0), ((0.25, 0.5), 0.45), ((0.1, 0.35, 0.6, 0.85), 0.7),
              ((), 0.8), ((0.2,), 0.85), ((0.35,), 0.6))


def schedule_at(model: nn.Module, fractions: Sequence[float]) -> List[MergeStep]:
    """Alternating merge steps in the blocks at these fractions of `model`'s depth (1 .. depth - 1)."""
    depth = len(model.blocks)
    blocks = sorted({min(depth - 1, max(1, round(f * depth))) for f in fractions})
    return alternating_schedule(blocks, tuple(model.patch_embed.grid_size))


@dataclass
class FitModels:
    """Whole slimmed models (FIT_MODELS) timed against the original, as landing measures: what
    the table's sums of block halves are fitted to."""

    shapes: Dict[str, Tuple[list, list, list]]  # name: (token counts, widths, merge blocks) for halves()
    rates: Dict[str, List[float]]  # name: images/s, one per repeat
    baseline_rates: List[float]  # the original's images/s, paired with each model's repeats
    baseline_ms: float  # the original's milliseconds per image

    @property
    def whole_ms(self) -> Dict[str, float]:
        """Milliseconds per image of each model: the original's over its paired speedup (speedup_estimate,
        as landing reads it)."""
        return {name: self.baseline_ms / speedup_estimate(r, self.baseline_rates) for name, r in self.rates.items()}

    def halves(self, table: LatencyTable) -> Dict[str, float]:
        return {name: table.halves(*shape) for name, shape in self.shapes.items()}

    def pooled(self, again: "FitModels") -> "FitModels":
        """These models timed twice: every paired repeat of both timings, so a stretch of a busy
        machine that fell on one model's runs moves its median less."""
        rates = {name: r + again.rates[name] for name, r in self.rates.items()}
        return FitModels(self.shapes, rates, self.baseline_rates + again.baseline_rates,
                         (self.baseline_ms + again.baseline_ms) / 2)


def _time_fit_models(table: LatencyTable, model: nn.Module, batch: int, multiple: int, device: torch.device,
                     dtype: torch.dtype, rounds: int, amp: bool, runtime: str) -> FitModels:
    """Time the whole models the table is fitted to, against the original.

    Block halves timed alone, over and over on the same tensors, run with warm caches; in a
    model, activations stream from block to block, and the framework runs between them. Eight
    whole models (FIT_MODELS), from the original's width to pruned and merged ones, are measured
    against the original (paired per repeat, as landing measures); fit_table fits the table to them.
    `rounds` paired repeats: with freed memory kept in the process (allocator.py) a CPU forward
    repeats within a few per cent.
    """
    variants, shapes = {"original": model}, {}
    for i, (fractions, keep) in enumerate(FIT_MODELS):
        schedule = schedule_at(model, fractions)
        variant = compressed_variant(model, schedule, keep, multiple).to(device, dtype).eval()
        variants[str(i)] = variant
        widths = [(w.qk, w.mlp) for w in block_widths(variant)]
        shapes[str(i)] = (token_counts(variant), widths, [s.block for s in schedule])
    images = timing_batch(batch, table.tokens[-1])
    cfg = SpeedConfig(batch_size=images, warmup=1, repeats=rounds, iters_per_repeat=1, amp=amp, dtype=dtype,
                      runtime=runtime)
    speed = measure_throughput(variants, (3, *model.patch_embed.img_size), cfg, device)
    rates = {name: speed[name].per_repeat for name in shapes}
    return FitModels(shapes, rates, speed["original"].per_repeat, 1e3 / speed["original"].throughput)


def fit_table(table: LatencyTable, whole: FitModels) -> None:
    """Fit the table's scale and overhead to the whole models (robust_line), and note how far the
    worst of them is from the fitted prediction (fit_error). Not a cost per activation on top, as
    tables v6-v9 fitted: that term and the scale traded against each other from run to run (scale
    0.7-1.3 on the same model), and a machine disturbed while one model ran moved their
    least-squares fit."""
    halves = whole.halves(table)
    table.baseline_ms = whole.baseline_ms
    table.scale, table.overhead_ms = robust_line(halves, whole.whole_ms, table.fixed_ms)
    table.fit_error = max(abs(table.time_of(h) / whole.whole_ms[name] - 1) for name, h in halves.items())


def robust_line(halves: Dict[str, float], whole_ms: Dict[str, float], fixed_ms: float) -> Tuple[float, float]:
    """(scale, overhead): whole-model time - fixed parts = overhead + scale x summed block halves,
    fitted by Theil-Sen (the median of the slopes between every two models, then the median
    intercept), so one disturbed model moves neither. The overhead is what a forward costs beyond
    its halves whatever the plan (the block's residual adds, module calls), which makes small
    models at small batches slower than their halves say: DeiT-S at batch 1 was predicted up to 21%
    too fast by a scale alone. A fit without a positive slope or with a negative overhead falls back
    to the scale alone (median_scale)."""
    names = [n for n in halves if halves[n] > 0]
    spread = max((halves[n] for n in names), default=0.0) * MIN_SPREAD
    slopes = [(whole_ms[a] - whole_ms[b]) / (halves[a] - halves[b]) for i, a in enumerate(names)
              for b in names[i + 1:] if abs(halves[a] - halves[b]) > spread]
    if slopes:
        scale = statistics.median(slopes)
        overhead = statistics.median(whole_ms[n] - fixed_ms - scale * halves[n] for n in names)
        if scale > 0 and overhead >= 0:
            return scale, overhead
    return median_scale(halves, whole_ms, fixed_ms), 0.0


def median_scale(halves: Dict[str, float], whole_ms: Dict[str, float], fixed_ms: float) -> float:
    """The median over models of (whole-model time - fixed parts) / summed block halves; 1.0 if
    no model gives a positive one."""
    scales = [(whole_ms[name] - fixed_ms) / halves[name] for name in halves if halves[name] > 0]
    scales = [s for s in scales if s > 0]
    return statistics.median(scales) if scales else 1.0


def _size_bias(tokens: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A proportional-attention bias (1, 1, 1, N) like the one merged tokens carry."""
    return torch.full((1, 1, 1, tokens), math.log(2.0), device=device, dtype=dtype)


def _rope_table(block: nn.Module, patches: int) -> Optional[torch.Tensor]:
    """The RoPE table of `patches` tokens for a block of a RoPE model (rotating them is part of its
    attention's cost), None for other blocks."""
    if block.rope is None:
        return None
    return block.rope.table(block.rope.coords((1, patches)))


def _merge_calls(block: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor], rope: Optional[torch.Tensor],
                 prefix: int, device: torch.device) -> Tuple[Callable[[], object], Callable[[], object]]:
    """A block's attention as is, and as a merging block runs it: with the class-attention row
    it needs and one merge step (their difference is the merge's cost)."""
    plain = lambda: block.attn(x, bias, False, rope)  # noqa: E731
    patches = x.shape[1] - prefix
    if patches < 2:
        return plain, plain  # nothing left to merge
    state = TokenState(x=x, size=None, grid=(1, patches), num_prefix=prefix)
    merge = TokenMerge(["w"]).to(device, x.dtype)
    importance = torch.rand(x.shape[0], patches, device=device, dtype=x.dtype)
    return plain, lambda: (block.attn(x, bias, True, rope), merge(state, importance))


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


def _sliced_block(block: nn.Module, attn_width: int, mlp_width: int) -> nn.Module:
    """A copy of a CAIT block slimmed to `attn_width` channels per head and `mlp_width` hidden units."""
    sliced = copy.deepcopy(block)
    holder = nn.Module()
    holder.blocks = nn.ModuleList([sliced])
    gates = list(attach_gates(holder).values())
    for gate, keep in zip(gates, (attn_width, attn_width, mlp_width)):
        gate.set_keep(keep)
    slim_block(sliced)
    detach_gates(holder)
    return sliced
