"""A compressed model on disk: a directory with model.safetensors and config.json.

config.json follows timm's Hub layout (architecture, num_classes, pretrained_cfg,
model_args), so timm itself can rebuild the model once cait_cli is imported; a
"cait" section records where the model came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import WRITE_ERRORS, atomic_directory, reported_write
from ..errors import CaitError, first_line
from ..method.cdcp import gates_of
from ..method.model import is_cait
from ..version import __version__
from .spec import ARCHITECTURE, CaitSpec, build

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

# pretrained_cfg entries worth keeping (the rest are about where timm downloads from)
_DATA_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
              "num_classes", "first_conv", "classifier", "license", "label_names")


def checkpoint_config(model: nn.Module, spec: CaitSpec, source: Dict[str, Any]) -> Dict[str, Any]:
    """The config.json of a compressed model."""
    base_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    pretrained_cfg = {k: _jsonable(base_cfg[k]) for k in _DATA_KEYS if k in base_cfg}
    pretrained_cfg["num_classes"] = model.num_classes
    pretrained_cfg["input_size"] = [model.patch_embed.proj.in_channels, *model.patch_embed.img_size]
    pretrained_cfg["fixed_input_size"] = False  # CAIT models run at any size (method/base.py: dynamic_img_size)
    return {
        "architecture": ARCHITECTURE,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": pretrained_cfg,
        "model_args": spec.to_model_args(),
        "cait": {"format_version": FORMAT_VERSION, "cait_cli_version": __version__, **source},
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def save_checkpoint(model: nn.Module, path: str | Path, spec: CaitSpec, source: Dict[str, Any],
                    extra_files: Optional[Dict[str, str]] = None, overwrite: bool = False) -> Path:
    """Write model.safetensors + config.json (+ extra text files) atomically.

    Everything is written to a temporary directory beside `path`, then renamed into
    place, so an interrupted save never leaves a half-written checkpoint. A failed write
    (a full disk, a quota) is one CaitError line with the space it needed.
    """
    if not is_cait(model) or gates_of(model):
        raise ValueError("save_checkpoint needs a slimmed CAIT model (no gates)")
    path = Path(path)
    if path.exists() and not overwrite:
        raise CaitError(f"{path} already exists; choose another --out or pass --overwrite")
    files = {CONFIG_NAME: json.dumps(checkpoint_config(model, spec, source), indent=2) + "\n"}
    files.update(extra_files or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    size = sum(t.nbytes for t in tensors.values()) + sum(len(text.encode()) for text in files.values())
    with atomic_directory(path, overwrite) as tmp, reported_write(path, size, (*WRITE_ERRORS, SafetensorError)):
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "cait": str(FORMAT_VERSION)})
        for name, text in files.items():
            (tmp / name).write_text(text)
    return path


def read_config(path: str | Path) -> Dict[str, Any]:
    """config.json of a compressed checkpoint directory, checked; CaitError if it is not one."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise CaitError(f"{path} is not a directory holding a compressed checkpoint")
    if not config_file.is_file() or not weights_file.is_file():
        raise CaitError(f"{path} is not a compressed checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CaitError(f"cannot read {config_file}: {err}") from err
    if not is_cait_config(config):
        raise CaitError(f"{path} is not a cait checkpoint (config.json architecture is not {ARCHITECTURE!r})")
    CaitSpec.from_model_args(config.get("model_args", {}))
    return config


def is_cait_config(config: Dict[str, Any]) -> bool:
    return isinstance(config, dict) and config.get("architecture") == ARCHITECTURE and "model_args" in config


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a compressed model from its directory and load its weights (eval mode)."""
    path = Path(path)
    config = read_config(path)
    model = build(CaitSpec.from_model_args(config["model_args"]), num_classes=config.get("num_classes"))
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as err:
        raise CaitError(f"cannot read {path / WEIGHTS_NAME}: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CaitError(f"{path / WEIGHTS_NAME} does not match its config.json: {first_line(err)}") from err
    model.pretrained_cfg = {**model.pretrained_cfg, **config.get("pretrained_cfg", {}), "file": str(path)}
    model.cait_config = config
    return model.eval()
