"""The model the student learns from: the original (default) or another of its label space (--teacher).

Checked before any training or timing, each refusal one line: a teacher gives logits over the
student's classes (as many, and the same label names in the same order where both list them);
token distillation needs a teacher whose final tokens lie as the student's do (prefix tokens,
patch grid, width): the original, or a ViT of its shape.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...errors import CaitError, first_line
from ...method.model import is_cait
from ..data.sources import resolve_data_config
from ..measuring.measure import is_headless, logits_of

ORIGINAL = "original"  # the report's name for the default teacher
TokenLayout = Tuple[int, Tuple[int, int], int]  # prefix tokens, patch grid (H, W), width


def check_student(student: nn.Module, teacher: Optional[str], kind: str, token_weight: float) -> None:
    """Refuse what a headless student (no classifier: it learns the original's features) cannot use."""
    if not is_headless(student):
        return
    if teacher is not None:
        raise CaitError("--teacher needs a classifier: this model is headless (num_classes=0) and learns the "
                        "original's features")
    if kind != "soft":
        raise CaitError(f"--distill {kind} needs logits: this model is headless (num_classes=0) and learns the "
                        "original's features")
    if token_weight > 0:
        raise CaitError("--token-distill is for classifiers: a headless model already learns the original's "
                        "final tokens, on the full grid")


def check_teacher(teacher: nn.Module, student: nn.Module, name: str, device: torch.device) -> None:
    """Refuse a teacher without logits over the student's classes, or that cannot take its images."""
    if is_headless(teacher):
        raise CaitError(f"--teacher {name} is headless (num_classes=0): it has no logits to teach a classifier")
    want = resolve_data_config(student)
    classes = _classes(teacher, name, want["input_size"], device)
    if classes != student.num_classes:
        raise CaitError(f"--teacher {name} predicts {classes} classes, the model {student.num_classes}: a teacher "
                        "must share the model's label space")
    names = resolve_data_config(teacher).get("label_names")
    if names and want.get("label_names") and list(names) != list(want["label_names"]):
        i = next(i for i, (a, b) in enumerate(zip(names, want["label_names"])) if a != b)
        raise CaitError(f"--teacher {name} names its classes otherwise (class {i}: {names[i]!r}, the model's "
                        f"{want['label_names'][i]!r}): a teacher must share the model's label space")


def _classes(teacher: nn.Module, name: str, input_size: Sequence[int], device: torch.device) -> int:
    """How many logits the teacher gives for two blank images of the student's input size."""
    images = torch.zeros(2, *input_size, device=device)
    try:
        with torch.inference_mode():
            logits = logits_of(teacher(images))
    except Exception as err:  # any model's own forward: its error in one line
        shape = "x".join(map(str, input_size))
        raise CaitError(f"--teacher {name} cannot take the model's {shape} images: {first_line(err)}") from err
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise CaitError(f"--teacher {name} does not give logits (batch, classes)")
    return int(logits.shape[-1])


def input_note(teacher: nn.Module, student: nn.Module, name: str) -> Optional[str]:
    """One line when the teacher was made for other inputs than it will see (the student's)."""
    if not getattr(teacher, "pretrained_cfg", None):
        return None
    theirs, ours = resolve_data_config(teacher), resolve_data_config(student)
    keys = [k for k in ("input_size", "mean", "std") if list(theirs[k]) != list(ours[k])]
    if not keys:
        return None
    differ = ", ".join(f"{k} {tuple(theirs[k])}" for k in keys)
    return f"the teacher {name} was made for {differ}; it sees the model's images ({', '.join(keys)} as the model's)"


def token_layout(model: nn.Module) -> Optional[TokenLayout]:
    """(prefix tokens, patch grid, width) of a full-grid ViT's final tokens; None for any other model
    (a convnet, a compressed model: its tokens lie on its own merged grid)."""
    embed = getattr(model, "patch_embed", None)
    if is_cait(model) or embed is None or not hasattr(model, "embed_dim"):
        return None
    return int(getattr(model, "num_prefix_tokens", 0)), tuple(embed.grid_size), int(model.embed_dim)


def check_token_teacher(teacher: nn.Module, student: nn.Module, name: str) -> None:
    """Refuse token distillation from a teacher whose tokens do not lie as the student's do."""
    want, have = token_layout(student), token_layout(teacher)
    if have == want:
        return
    prefix, (h, w), width = want
    has = "no such tokens" if have is None else f"{have[0]} prefix tokens, {have[1][0]}x{have[1][1]}, width {have[2]}"
    raise CaitError(f"--token-distill needs a teacher whose final tokens lie as the model's ({prefix} prefix tokens, "
                    f"a {h}x{w} grid, width {width}); {name} has {has}: use the original (no --teacher)")
