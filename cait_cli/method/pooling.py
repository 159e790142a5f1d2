"""Pooling heads on merged tokens: each token weighs as the patches it covers.

timm's global-average (GAP) and attention (MAP) pooling treat every token alike. After
ATME a merged token stands for several patches, so the average weighs it by its size
and the MAP head adds log(size) to its attention logits (proportional attention, as in
the blocks). Where a merge fuses identical neighbours, the pooled feature is then
exactly the unmerged model's. Class-token, max and no pooling need no sizes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from .tokens import size_bias

SIZED_POOLS = ("avg", "avgmax")  # global pools whose result depends on how many copies a token has


def pools_by_size(model: nn.Module, pool_type: Optional[str] = None) -> bool:
    """Whether `model`'s pooling (or `pool_type`) depends on token sizes."""
    if getattr(model, "attn_pool", None) is not None:
        return True
    return (model.global_pool if pool_type is None else pool_type) in SIZED_POOLS


def pool_tokens(model: nn.Module, x: torch.Tensor, size: torch.Tensor,
                pool_type: Optional[str] = None) -> torch.Tensor:
    """timm's VisionTransformer.pool for a size-weighted pooling (see `pools_by_size`).

    x:    (B, P + N, C) final (normalised) tokens, prefix first
    size: (1 or B, P + N, 1) patches each token covers
    returns the pooled feature (B, C)
    """
    pool_type = model.global_pool if pool_type is None else pool_type
    x, size = _pooled_part(model, x, size)
    if model.attn_pool is not None:
        return model.attn_pool(x, attn_mask=size_bias(size, x.dtype))  # bias (1 or B, 1, 1, N)
    weight = size.to(x.dtype)
    mean = (x * weight).sum(dim=1) / weight.sum(dim=1)  # (B, C)
    return mean if pool_type == "avg" else 0.5 * (x.amax(dim=1) + mean)


def _pooled_part(model: nn.Module, x: torch.Tensor, size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The tokens timm pools (prefix tokens only if pool_include_prefix) and their sizes."""
    if model.pool_include_prefix:
        return x, size
    p = model.num_prefix_tokens
    return x[:, p:], size[:, p:]
