"""The token set that flows between CAIT blocks.

Besides the tokens themselves, a block needs to know where the patch tokens sit
on the image grid (so merges pair true neighbours) and how many original patches
each token stands for (for proportional attention and size-weighted fusion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch


@dataclass
class TokenState:
    """Tokens of one forward pass.

    x:      (B, P + H*W, C) prefix tokens first, then patch tokens in row-major grid order
    size:   (1, P + H*W, 1) patches each token stands for, or None while all are 1.
            Under ATME sizes depend only on the merge schedule, never on the image, so
            one row broadcasts over the batch; image-dependent merging (the ToMe
            baseline) gives (B, N, 1).
    grid:   (H, W) of the patch tokens
    num_prefix: P, the class/distillation/register tokens that never merge
    pos:    (1, H*W, 2) rotary coordinates of the patch tokens (RoPE models), or None; a merge
            averages them by size, so a merged token sits at the centre of the cells it covers
    rope:   (H*W, 2 * head_dim) RoPE [sin, cos] table at `pos`, computed once per grid, or None
    """

    x: torch.Tensor
    size: Optional[torch.Tensor]
    grid: Tuple[int, int]
    num_prefix: int
    pos: Optional[torch.Tensor] = None
    rope: Optional[torch.Tensor] = None

    def log_size(self) -> Optional[torch.Tensor]:
        """Additive attention bias (1 or B, 1, 1, N) for proportional attention, or None."""
        if self.size is None:
            return None
        return size_bias(self.size, self.x.dtype)

    def sizes(self) -> torch.Tensor:
        """Sizes as a tensor (1, N, 1), ones when nothing has merged yet."""
        if self.size is not None:
            return self.size
        return torch.ones(1, self.x.shape[1], 1, device=self.x.device, dtype=self.x.dtype)


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Token sizes (1 or B, N, 1) -> additive attention bias log(size): (1 or B, 1, 1, N).

    Added to attention logits, it makes a token of size n attract the attention of n copies
    of itself (proportional attention).
    """
    return size.log().transpose(1, 2).unsqueeze(1).to(dtype)
