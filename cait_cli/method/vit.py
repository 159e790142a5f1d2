"""Patch a timm VisionTransformer (DeiT, AugReg, CLIP, DINO...) into a CAIT model, in place
(as ToMe patches timm): each standard Block becomes a CaitBlock over the same layers."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
from timm.layers import Mlp, PatchDropout
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import CaitError
from .atme import MergeStep
from .base import CaitMixin, is_cait_block, patch_model
from .block import CaitAttention, CaitBlock, CaitMlp


def check_vision_transformer(model: VisionTransformer) -> None:
    """Raise CaitError unless CAIT can patch this VisionTransformer."""
    name = type(model).__name__
    if model.attn_pool is not None and model.attn_pool.pos_embed is not None:
        raise CaitError(f"{name}'s attention pooling has position embeddings of a fixed token count, "
                        "which merging changes")
    if isinstance(model.patch_drop, PatchDropout) and model.patch_drop.prob > 0:
        raise CaitError(f"{name} drops patches during training, which breaks the token grid")
    for i, block in enumerate(model.blocks):
        _check_block(block, i)


def _check_block(block: nn.Module, index: int) -> None:
    if is_cait_block(block):
        return
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        raise CaitError(f"block {index} is a {type(block).__name__}; cait supports timm's standard ViT block")
    attn, mlp = block.attn, block.mlp
    plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm))
    if not plain or attn.gate is not None:
        raise CaitError(f"block {index} uses q/k or scale norms or gating, which cait does not support")


def convert_vit_block(block: Block) -> CaitBlock:
    attn, mlp = block.attn, block.mlp
    heads, head_dim = attn.num_heads, attn.head_dim
    cait_attn = CaitAttention(attn.qkv, attn.proj, heads, head_dim, head_dim, attn.scale,
                              attn.attn_drop.p, attn.proj_drop)
    cait_mlp = CaitMlp(mlp.fc1, mlp.act, mlp.fc2, mlp.drop1, mlp.drop2)
    return CaitBlock(block.norm1, cait_attn, block.ls1, block.drop_path1,
                     block.norm2, cait_mlp, block.ls2, block.drop_path2)


def patch_vision_transformer(model: VisionTransformer, schedule: Sequence[MergeStep] = (),
                             importance: Optional[str] = None) -> VisionTransformer:
    """Turn a timm VisionTransformer into a CAIT model in place (see model.patch_vit)."""
    check_vision_transformer(model)
    return patch_model(model, schedule, importance, convert_vit_block, CaitMixin)
