"""Patch a timm ViT of either family into a CAIT model, in place (as ToMe patches timm): this
module chooses the family (vit.py: VisionTransformer, eva.py: Eva); base.py holds what they share."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch.nn as nn
from timm.models.eva import Eva, EvaBlock
from timm.models.vision_transformer import VisionTransformer

from ..errors import CaitError
from .atme import MergeStep
from .base import CaitMixin, is_cait_block
from .block import CaitBlock, ImportanceSource
from .eva import check_eva, convert_eva_block, patch_eva
from .vit import check_vision_transformer, convert_vit_block, patch_vision_transformer


def is_cait(model: nn.Module) -> bool:
    return isinstance(model, CaitMixin)


def check_vit(model: nn.Module) -> None:
    """Raise CaitError unless CAIT can patch this model."""
    check, _ = _family(model)
    check(model)


def patch_vit(model: nn.Module, schedule: Sequence[MergeStep] = (),
              importance: Optional[ImportanceSource] = None) -> nn.Module:
    """Turn a timm ViT (a VisionTransformer or an Eva) into a CAIT model in place, with the given merge schedule.

    importance: what scores tokens for ATME's fusion (see CaitAttention.importance_query);
    None keeps a CAIT model's own, else "cls" where the model has a class token,
    "received" where it has none.
    Calling it again on a CAIT model replaces the schedule. Weights are shared with
    the original modules, not copied.
    """
    _, patch = _family(model)
    return patch(model, schedule, importance)


def _family(model: nn.Module) -> Tuple[Callable[[nn.Module], None], Callable[..., nn.Module]]:
    """The check and the patch of `model`'s family; CaitError for a model of neither."""
    if isinstance(model, Eva):
        return check_eva, patch_eva
    if isinstance(model, VisionTransformer):
        return check_vision_transformer, patch_vision_transformer
    raise CaitError(f"{type(model).__name__} is not a timm VisionTransformer or Eva; cait compresses timm's ViT family")


def cait_view(block: nn.Module) -> CaitBlock:
    """A CaitBlock computing what `block` computes (a timm ViT or Eva block, or a CaitBlock itself),
    for reading shapes and weight norms off blocks of models that are not patched."""
    if is_cait_block(block):
        return block
    if isinstance(block, EvaBlock):
        return convert_eva_block(block)
    return convert_vit_block(block)
