"""Patch a timm `Eva` (EVA-02, DINOv3, the rope ViTs) into a CAIT model, in place.

An Eva block becomes a CaitBlock: its q/k/v projections one fused `attn.qkv`
(EVA's separate q/v biases and fixed zero k bias become that layer's bias), its
LayerScale gammas `ls1.gamma`/`ls2.gamma`, its SwiGLU MLP a CaitGluMlp
(`fc1_g`, `fc1_x`). Rotary positions travel with the tokens (TokenState.pos,
see rope.py): a merged token is rotated as the centre of the cells it covers.
CDCP keeps q/k channels in the pairs RoPE rotates together (PairedGate), and a
slimmed block keeps the matching columns of the RoPE table (`rope_channels`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import GluMlp, LayerScale, Mlp, SwiGLU, apply_rot_embed_cat
from timm.layers.attention import AttentionRope
from timm.models.eva import Eva, EvaAttention, EvaBlock

from ..errors import CaitError
from .atme import MergeStep
from .base import CaitMixin, is_cait_block, patch_model
from .block import CaitAttention, CaitBlock, CaitGluMlp, CaitMlp
from .gates import ChannelGate, PairedGate
from .rope import GridRope, pair_partner
from .tokens import TokenState


class CaitRopeAttention(CaitAttention):
    """CaitAttention that rotates the patch tokens' queries and keys (timm's RoPE on them).

    rope_channels: (qk_dim,) which channels of the full head's RoPE table this (slimmed) head keeps.
    """

    def __init__(self, *args, num_prefix: int, rotate_half: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_prefix, self.rotate_half = num_prefix, rotate_half
        self.register_buffer("rope_channels", torch.arange(self.qk_dim))

    def position(self, q: torch.Tensor, k: torch.Tensor,
                 rope: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, h, N, qk_dim); rope (N - P, 2 * head_dim) [sin, cos] of the full head."""
        if rope is None:
            return q, k
        full = rope.shape[-1] // 2
        table = rope.index_select(-1, torch.cat([self.rope_channels, self.rope_channels + full]))
        p = self.num_prefix

        def rotated(t: torch.Tensor) -> torch.Tensor:  # prefix tokens have no position
            return torch.cat([t[:, :, :p], apply_rot_embed_cat(t[:, :, p:], table, half=self.rotate_half)], dim=2)

        return rotated(q), rotated(k)

    def channel_multiple(self, multiple: int) -> int:
        return math.lcm(multiple, 2)  # whole RoPE pairs

    def new_qk_gate(self, scores: torch.Tensor, multiple: int) -> ChannelGate:
        partner = pair_partner(self.qk_dim, self.rotate_half)
        return PairedGate(self.qk_dim, scores, self.channel_multiple(multiple), partner)

    def keep_qk_channels(self, index: torch.Tensor) -> None:
        self.rope_channels = self.rope_channels[index.to(self.rope_channels.device)]


class CaitEvaMixin(CaitMixin):
    """What a patched Eva gains beyond CaitMixin: token positions for RoPE, a block loop."""

    pool_include_prefix = False  # Eva pools patch tokens only (or the class token)
    cait_rope: Optional[GridRope]

    def embed(self, x: torch.Tensor) -> TokenState:
        x = self.patch_embed(x)  # (B, H, W, C): patched models take any image size
        grid = tuple(x.shape[1:3])
        x, _ = self._pos_embed(x)  # class/register tokens and absolute positions (rope=None: no table here)
        pos = self.cait_rope.coords(grid) if self.cait_rope is not None else None
        return TokenState(x=self.norm_pre(x), size=None, grid=grid, num_prefix=self.num_prefix_tokens, pos=pos)

    def forward_tokens(self, x: torch.Tensor) -> TokenState:
        state = self.embed(x)
        for block in self.blocks:
            state = block(state)
        return state


def check_eva(model: Eva) -> None:
    """Raise CaitError unless CAIT can patch this Eva."""
    name = type(model).__name__
    if getattr(model, "rope_mixed", False):
        raise CaitError(f"{name} uses mixed (learned per-block) RoPE, which cait does not support yet")
    if model.rope is not None:
        GridRope(model.rope)  # refuses the rope types it cannot evaluate off the grid
    if model.patch_drop is not None:
        raise CaitError(f"{name} drops patches during training, which breaks the token grid")
    for i, block in enumerate(model.blocks):
        if not is_cait_block(block):
            _check_eva_block(block, i, model.rope)


def _check_eva_block(block: nn.Module, index: int, rope: Optional[nn.Module]) -> None:
    attn, mlp = block.attn, block.mlp
    if type(block) is not EvaBlock or type(attn) not in (EvaAttention, AttentionRope):
        raise CaitError(f"block {index} is a {type(block).__name__}; cait supports timm's pre-norm Eva block")
    plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm))
    if not plain or attn.gate is not None or getattr(attn, "num_kv_groups", 1) != 1:
        raise CaitError(f"block {index} uses q/k or scale norms, gating or grouped queries (cait supports none)")
    if type(mlp) not in (Mlp, GluMlp, SwiGLU) or not isinstance(mlp.norm, nn.Identity):
        raise CaitError(f"block {index}'s MLP ({type(mlp).__name__}, scale norm) is not one cait supports")
    if rope is not None and rope.dim != attn.head_dim:
        raise CaitError(f"block {index}: RoPE covers {rope.dim} of {attn.head_dim} head channels; cait needs all")


def patch_eva(model: Eva, schedule: Sequence[MergeStep] = (), importance: Optional[str] = None) -> Eva:
    """Turn a timm Eva into a CAIT model in place (see model.patch_vit; weights are shared, not copied)."""
    check_eva(model)
    rope = getattr(model, "cait_rope", None)  # patched before: timm's rope module is gone
    if rope is None and model.rope is not None:
        rope = GridRope(model.rope)
    patch_model(model, schedule, importance, convert_eva_block, CaitEvaMixin)
    for block in model.blocks:
        block.rope = rope
    model.cait_rope = rope
    model.rope = None  # timm's tables (a fixed grid) are replaced by cait_rope's; it holds no weights
    return model


def convert_eva_block(block: EvaBlock) -> CaitBlock:
    attn = block.attn
    cait_attn = CaitRopeAttention(_fused_qkv(attn), attn.proj, attn.num_heads, attn.head_dim, attn.head_dim,
                                  attn.scale, attn.attn_drop.p, attn.proj_drop,
                                  num_prefix=attn.num_prefix_tokens, rotate_half=bool(attn.rotate_half))
    return CaitBlock(block.norm1, cait_attn, _layer_scale(block.gamma_1), block.drop_path1,
                     block.norm2, _convert_mlp(block.mlp), _layer_scale(block.gamma_2), block.drop_path2)


def _fused_qkv(attn: nn.Module) -> nn.Linear:
    """One Linear computing [q, k, v] as the Eva attention does (its biases folded in)."""
    separate_bias = getattr(attn, "q_bias", None)
    if attn.qkv is not None and separate_bias is None:
        return attn.qkv
    if attn.qkv is not None:
        weight, bias = attn.qkv.weight, torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
    else:
        layers = (attn.q_proj, attn.k_proj, attn.v_proj)
        weight = torch.cat([layer.weight for layer in layers])
        biases = [layer.bias if layer.bias is not None else torch.zeros_like(layer.weight[:, 0]) for layer in layers]
        bias = None if all(layer.bias is None for layer in layers) else torch.cat(biases)
    return _linear_of(weight, bias)


def _linear_of(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _layer_scale(gamma: Optional[nn.Parameter]) -> nn.Module:
    if gamma is None:
        return nn.Identity()
    scale = LayerScale(gamma.numel(), device=gamma.device, dtype=gamma.dtype)
    scale.gamma = gamma
    return scale


def _convert_mlp(mlp: nn.Module) -> CaitMlp:
    if isinstance(mlp, Mlp):
        return CaitMlp(mlp.fc1, mlp.act, mlp.fc2, mlp.drop1, mlp.drop2)
    if isinstance(mlp, SwiGLU):
        return CaitGluMlp(mlp.fc1_g, mlp.fc1_x, mlp.act, mlp.fc2, mlp.drop1, mlp.drop2)
    first, second = mlp.fc1.weight.chunk(2)  # GluMlp: packed fc1, act on the first half unless gate_last
    bias_first, bias_second = mlp.fc1.bias.chunk(2) if mlp.fc1.bias is not None else (None, None)
    gate, value = (_linear_of(first, bias_first), _linear_of(second, bias_second))
    if mlp.gate_last:
        gate, value = value, gate
    return CaitGluMlp(gate, value, mlp.act, mlp.fc2, mlp.drop1, mlp.drop2)
