"""ToMe, token merging by bipartite soft matching (Bolya et al., ICLR 2023), as a peer.

Written from the paper's algorithm for the comparison in benchmarks/proof.py. In
every block, after attention, the patch tokens are split alternately into two
sets A and B; each A token finds its most similar B token (cosine similarity of
the attention keys, averaged over heads); the r most similar pairs are merged by
a size-weighted average. Proportional attention (log size added to the attention
logits) accounts for tokens that stand for several patches. Prefix tokens (class,
distillation, registers) never merge.

Unlike ATME the merged tokens depend on the image and no longer form a grid; for
dense tasks `traced_intermediates` follows every patch to the token it joined.
The blocks are cait_cli's CaitBlock (same attention kernel, same proportional
attention), so speed differences come from the merging alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from cait_cli.method.block import CaitAttention
from cait_cli.method.cost import block_macs, block_shapes, model_macs
from cait_cli.method.model import patch_vit
from cait_cli.method.tokens import TokenState


class KeyMetricAttention(CaitAttention):
    """CaitAttention that also returns the keys averaged over heads, ToMe's similarity metric."""

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor], need_importance: bool,
                rope: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self.project(x)
        q, k = self.position(q, k, rope)
        metric = k.mean(dim=1) if need_importance else None  # (B, N, qk_dim)
        return self.attend(q, k, v, bias), metric


def _gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t: (B, N, D), index: (B, M) -> (B, M, D)."""
    return t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


@dataclass(frozen=True)
class Matching:
    """Which tokens one ToMe step merges. A = even positions, B = odd positions.

    merged_a: (B, r) A indices that merge away; kept_a: (B, |A| - r) the others, in order;
    into_b:   (B, r) the B index each merged A token joins.
    """

    merged_a: torch.Tensor
    kept_a: torch.Tensor
    into_b: torch.Tensor

    def destination(self, n: int) -> torch.Tensor:
        """(B, n): where each of the n input tokens ends up among the merged tokens."""
        batch, kept = self.kept_a.shape[0], self.kept_a.shape[1]
        dest_a = torch.empty(batch, (n + 1) // 2, dtype=torch.long, device=self.kept_a.device)
        dest_a.scatter_(1, self.kept_a, torch.arange(kept, device=dest_a.device).expand(batch, -1))
        dest_a.scatter_(1, self.merged_a, kept + self.into_b)
        dest_b = kept + torch.arange(n // 2, device=dest_a.device).expand(batch, -1)
        dest = torch.empty(batch, n, dtype=torch.long, device=dest_a.device)
        dest[:, ::2], dest[:, 1::2] = dest_a, dest_b
        return dest


def bipartite_match(metric: torch.Tensor, r: int) -> Matching:
    """The r most similar (A, B) pairs by cosine similarity of metric (B, N, D); 0 < r <= N // 2."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)  # (B, |A|)
    order = best.argsort(dim=-1, descending=True)
    merged_a, kept_a = order[:, :r], order[:, r:].sort(dim=-1).values
    return Matching(merged_a, kept_a, partner.gather(1, merged_a))


def merge_matched(x: torch.Tensor, size: torch.Tensor, match: Matching) -> Tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of the matched pairs of x (B, N, C) with sizes (B, N, 1).

    Returns x (B, N - r, C) and sizes (B, N - r, 1): unmerged A tokens, then B tokens.
    """
    weighted = x * size
    a_x, b_x = weighted[:, ::2], weighted[:, 1::2]
    a_size, b_size = size[:, ::2], size[:, 1::2]
    into_b, merged_a, kept_a = match.into_b, match.merged_a, match.kept_a
    b_x = b_x.scatter_add(1, into_b.unsqueeze(-1).expand(-1, -1, x.shape[-1]), _gather_rows(a_x, merged_a))
    b_size = b_size.scatter_add(1, into_b.unsqueeze(-1), _gather_rows(a_size, merged_a))
    new_size = torch.cat([_gather_rows(a_size, kept_a), b_size], dim=1)
    new_x = torch.cat([_gather_rows(a_x, kept_a), b_x], dim=1) / new_size
    return new_x, new_size


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor,
                    r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge r tokens of x: (B, N, C) with sizes (B, N, 1), matched by metric (B, N, D).

    Returns x (B, N - r, C) and sizes (B, N - r, 1): unmerged A tokens, then B tokens.
    """
    r = min(r, x.shape[1] // 2)
    if r <= 0:
        return x, size
    return merge_matched(x, size, bipartite_match(metric, r))


class BipartiteMerge(nn.Module):
    """Merges `r` patch tokens after a block's attention (the slot ATME's TokenMerge uses).

    While `trace` is a list, each forward appends where every patch token went: (B, N_in).
    """

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r
        self.trace: Optional[List[torch.Tensor]] = None

    def forward(self, state: TokenState, metric: torch.Tensor) -> TokenState:
        """metric: (B, N_patches, D) for the patch tokens of state.x."""
        p = state.num_prefix
        sizes = state.sizes().expand(state.x.shape[0], -1, -1)
        patches, patch_size = state.x[:, p:], sizes[:, p:]
        r = min(self.r, patches.shape[1] // 2)
        if r > 0:
            match = bipartite_match(metric, r)
            if self.trace is not None:
                self.trace.append(match.destination(patches.shape[1]))
            patches, patch_size = merge_matched(patches, patch_size, match)
        x = torch.cat([state.x[:, :p], patches], dim=1)
        size = torch.cat([sizes[:, :p], patch_size], dim=1)
        return TokenState(x=x, size=size, grid=(1, patches.shape[1]), num_prefix=p)


def traced_intermediates(model: nn.Module, images: torch.Tensor, indices: Sequence[int],
                         norm: bool = True) -> List[torch.Tensor]:
    """ToMe's merges traced back to the grid: patch tokens after the listed blocks, (B, C, H, W).

    Every patch cell gets the features of the token its patch was merged into (ToMe's
    "unmerge", the counterpart of ATME's). `model` is a ToMe model (apply_tome).
    """
    state = model.embed(images)
    (h, w), p = state.grid, state.num_prefix
    where = torch.arange(h * w, device=images.device).expand(images.shape[0], -1)  # (B, HW): token of each patch
    maps = []
    for i, block in enumerate(model.blocks[: max(indices) + 1]):
        trace: List[torch.Tensor] = []
        if block.merge is not None:
            block.merge.trace = trace
        try:
            state = block(state)
        finally:
            if block.merge is not None:
                block.merge.trace = None
        for dest in trace:
            where = dest.gather(1, where)
        if i in indices:
            tokens = (model.norm(state.x) if norm else state.x)[:, p:]  # (B, N_i, C)
            cells = _gather_rows(tokens, where)  # (B, HW, C)
            maps.append(cells.transpose(1, 2).reshape(images.shape[0], -1, h, w))
    return maps


def apply_tome(model: nn.Module, r: int | Sequence[int]) -> nn.Module:
    """Patch a timm ViT in place to merge r[i] tokens after block i's attention (r: int = same in all)."""
    patch_vit(model)
    depth = len(model.blocks)
    per_block = [r] * depth if isinstance(r, int) else list(r)
    if len(per_block) != depth:
        raise ValueError(f"need one r per block ({depth}), got {len(per_block)}")
    for block, r_block in zip(model.blocks, per_block):
        block.attn.__class__ = KeyMetricAttention
        block.merge = BipartiteMerge(r_block) if r_block > 0 else None
    return model


def token_counts(num_patches: int, num_prefix: int, r: Sequence[int]) -> List[Tuple[int, int]]:
    """Per block: tokens into attention and into the MLP (r is capped at half the patches)."""
    counts = []
    for r_block in r:
        merged = num_patches - min(r_block, num_patches // 2)
        counts.append((num_prefix + num_patches, num_prefix + merged))
        num_patches = merged
    return counts


def tome_macs(model: nn.Module, r: int | Sequence[int]) -> int:
    """MACs of one image through a ToMe model (token counts do not depend on the image)."""
    full = block_shapes(model)
    per_block = [r] * len(full) if isinstance(r, int) else list(r)
    counts = token_counts(model.patch_embed.num_patches, model.num_prefix_tokens, per_block)
    merged = [replace(s, tokens_in=n_in, tokens_out=n_out) for s, (n_in, n_out) in zip(full, counts)]
    return model_macs(model) - sum(map(block_macs, full)) + sum(map(block_macs, merged))
