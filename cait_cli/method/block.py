"""A timm ViT block that carries token sizes, merges tokens and gates channels.

Parameter names match timm's Block (norm1, attn.qkv, attn.proj, ls1, norm2,
mlp.fc1, mlp.fc2, ls2), so timm state dicts load unchanged. The widths are per
block: queries and keys have `qk_dim` channels per head, values `v_dim`, the MLP
`mlp_dim` hidden units. The softmax scale stays that of the original head width,
so a slimmed block computes exactly what the gated one did.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Literal, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atme import TokenMerge
from .gates import ChannelGate
from .rope import GridRope
from .tokens import TokenState

# What scores a token for ATME's fusion: the attention it receives from the class token
# ("cls"), or from the average query ("received", for models without a class token).
ImportanceSource = Literal["cls", "received"]
IMPORTANCE_SOURCES = ("cls", "received")


class CaitAttention(nn.Module):
    """Multi-head self-attention with consistent q/k and v channel gates."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, qk_dim: int, v_dim: int,
                 scale: float, attn_drop: float = 0.0, proj_drop: nn.Module | None = None) -> None:
        super().__init__()
        if qkv.out_features != num_heads * (2 * qk_dim + v_dim):
            raise ValueError("qkv width does not match heads and channel widths")
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale = scale
        self.attn_drop = attn_drop
        self.proj_drop = proj_drop if proj_drop is not None else nn.Identity()
        self.gate_qk: Optional[ChannelGate] = None
        self.gate_v: Optional[ChannelGate] = None
        self.importance_source: ImportanceSource = "cls"  # patch_vit sets it per model

    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, N, C) -> gated q, k (B, h, N, qk_dim) and v (B, h, N, v_dim)."""
        B, N, _ = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).split([h * self.qk_dim, h * self.qk_dim, h * self.v_dim], dim=-1)
        q = q.view(B, N, h, self.qk_dim).transpose(1, 2)
        k = k.view(B, N, h, self.qk_dim).transpose(1, 2)
        v = v.view(B, N, h, self.v_dim).transpose(1, 2)
        if self.gate_qk is not None:  # one mask for all heads, for q and k alike
            mask = self.gate_qk()
            q, k = q * mask, k * mask
        if self.gate_v is not None:
            v = v * self.gate_v()
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention output projected back to the residual width: (B, N, C)."""
        B, h, N, _ = v.shape
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, h * self.v_dim)))

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor], need_importance: bool,
                rope: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, N, C); bias: (1 or B, 1, 1, N) log-size or None; rope: RoPE table of the
        patch tokens (see CaitRopeAttention), None for position-free attention.

        Returns the output (B, N, C) and, if asked, the attention each token received
        (see `importance_source`), averaged over heads: (B, N).
        """
        q, k, v = self.project(x)
        q, k = self.position(q, k, rope)
        out = self.attend(q, k, v, bias)
        importance = None
        if need_importance:  # (B, h, 1, N) -> (B, N); one attention row is computed
            logits = (self.importance_query(q, bias) * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            importance = logits.softmax(dim=-1).mean(dim=1).squeeze(1)
        return out, importance

    def position(self, q: torch.Tensor, k: torch.Tensor,
                 rope: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Positional rotation of q and k; plain ViT attention has none (its positions are added)."""
        return q, k

    def channel_multiple(self, multiple: int) -> int:
        """The multiple that kept q/k (and v) widths of this attention must be, given the one asked for."""
        return multiple

    def new_qk_gate(self, scores: torch.Tensor, multiple: int) -> ChannelGate:
        """A full-width gate for the q/k channels of every head."""
        return ChannelGate(self.qk_dim, scores, multiple)

    def keep_qk_channels(self, index: torch.Tensor) -> None:
        """Slimming keeps q/k channels `index` of each head; plain attention holds nothing per channel."""

    def importance_query(self, q: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The query whose attention row scores the tokens: (B, h, N, d) -> (B, h, 1, d).

        "cls": the class token's query. "received": the mean of all queries, each weighted
        by the patches its token covers (size = exp(bias)). Its logits are the mean of every
        query's logits, so its softmax is the (renormalised) geometric mean over queries of
        the attention each token receives, at the cost of the one class-token row.
        """
        if self.importance_source == "cls":
            return q[:, :, :1]
        if bias is None:
            return q.mean(dim=2, keepdim=True)
        weight = bias.exp().transpose(-2, -1)  # (1 or B, 1, N, 1)
        return (q * weight).sum(dim=2, keepdim=True) / weight.sum(dim=2, keepdim=True)


class CaitMlp(nn.Module):
    """timm's Mlp with a gate on the hidden units."""

    hidden_inputs: Tuple[str, ...] = ("fc1",)  # the Linear layers whose outputs are the hidden units

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear,
                 drop1: nn.Module | None = None, drop2: nn.Module | None = None) -> None:
        super().__init__()
        self.fc1 = fc1
        self._set_tail(act, fc2, drop1, drop2)

    def _set_tail(self, act: nn.Module, fc2: nn.Linear, drop1: nn.Module | None, drop2: nn.Module | None) -> None:
        self.act, self.fc2 = act, fc2
        self.drop1 = drop1 if drop1 is not None else nn.Identity()
        self.drop2 = drop2 if drop2 is not None else nn.Identity()
        self.gate: Optional[ChannelGate] = None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))  # (B, N, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(x)
        if self.gate is not None:
            hidden = hidden * self.gate()
        return self.drop2(self.fc2(self.drop1(hidden)))


class CaitGluMlp(CaitMlp):
    """A gated-linear-unit MLP (SwiGLU): hidden = act(fc1_g x) * fc1_x x. One gate masks the hidden
    units, so a pruned unit drops its gate row and its value row together."""

    hidden_inputs = ("fc1_g", "fc1_x")

    def __init__(self, fc1_g: nn.Linear, fc1_x: nn.Linear, act: nn.Module, fc2: nn.Linear,
                 drop1: nn.Module | None = None, drop2: nn.Module | None = None) -> None:
        nn.Module.__init__(self)
        self.fc1_g, self.fc1_x = fc1_g, fc1_x
        self._set_tail(act, fc2, drop1, drop2)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1_g(x)) * self.fc1_x(x)


class CaitBlock(nn.Module):
    """Pre-norm transformer block: attention, optional token merge, MLP."""

    def __init__(self, norm1: nn.Module, attn: CaitAttention, ls1: nn.Module, drop_path1: nn.Module,
                 norm2: nn.Module, mlp: CaitMlp, ls2: nn.Module, drop_path2: nn.Module,
                 merge: Optional[TokenMerge] = None) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = norm1, attn, ls1, drop_path1
        self.norm2, self.mlp, self.ls2, self.drop_path2 = norm2, mlp, ls2, drop_path2
        self.merge = merge
        self.rope: Optional[GridRope] = None  # RoPE models: the model's tables, shared by its blocks

    def forward(self, state: TokenState) -> TokenState:
        need_importance = self.merge is not None
        if self.rope is not None and state.rope is None and state.pos is not None:
            state = replace(state, rope=self.rope.table(state.pos))  # once per grid; merges reset it
        out, importance = self.attn(self.norm1(state.x), state.log_size(), need_importance, state.rope)
        state = replace(state, x=state.x + self.drop_path1(self.ls1(out)))
        if self.merge is not None:
            state = self.merge(state, importance[:, state.num_prefix:])
        x = state.x + self.drop_path2(self.ls2(self.mlp(self.norm2(state.x))))
        return replace(state, x=x)
