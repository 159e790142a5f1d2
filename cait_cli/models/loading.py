"""Load the model a user names: an alias, a timm name, hf-hub:ORG/NAME, or a local path."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal

import timm
import torch.nn as nn
from timm.models._input import get_model_args

from ..errors import CaitError, first_line, is_network_error
from ..method.model import check_vit, is_cait
from .checkpoint import CONFIG_NAME, is_cait_config, load_checkpoint
from .onnx_model import is_onnx_path, load_onnx

Weights = Literal["pretrained", "random"]

ALIASES: Dict[str, str] = {
    "deit_tiny": "deit_tiny_patch16_224.fb_in1k",
    "deit_small": "deit_small_patch16_224.fb_in1k",
    "deit_base": "deit_base_patch16_224.fb_in1k",
}


@dataclass
class LoadedModel:
    """A model and what is known of where it came from."""

    model: nn.Module
    name: str  # what the user asked for
    source: str  # what was loaded: timm name, hf-hub id or path
    architecture: str  # timm architecture to rebuild the (uncompressed) base
    model_args: Dict[str, Any] = field(default_factory=dict)
    weights: Weights = "pretrained"

    @property
    def is_compressed(self) -> bool:
        return is_cait(self.model)


def load_model(name: str, weights: Weights = "pretrained", require_vit: bool = True) -> LoadedModel:
    """Load `name`; CaitError with one clear line if it cannot be found or is not a ViT.

    An exported .onnx file loads as an OnnxModel (ONNX Runtime, CPU), which only evaluates.
    """
    if weights not in ("pretrained", "random"):
        raise CaitError(f"--weights must be 'pretrained' or 'random', got {weights!r}")
    path = Path(name).expanduser()
    if is_onnx_path(name):
        if require_vit:
            raise CaitError(f"{name} is an exported ONNX file; compress the checkpoint or model it came from")
        return LoadedModel(load_onnx(path), name, str(path), "onnx")
    if path.exists():
        loaded = _load_local(name, path, weights)
    elif name.startswith("hf-hub:") or name in ALIASES or timm.is_model(name.split(".")[0]) or timm.is_model(name):
        loaded = _load_timm(name, ALIASES.get(name, name), weights)
    else:
        raise CaitError(f"unknown model {name!r}: not a local path, a timm model name, an alias "
                        f"({', '.join(ALIASES)}) or hf-hub:ORG/NAME")
    if require_vit and not loaded.is_compressed:
        check_vit(loaded.model)
    loaded.model.eval()
    return loaded


def model_stem(name: str) -> str:
    """A short file name for what `name` loads: fashion.cait -> fashion, hf-hub:org/x -> x."""
    return Path(name.replace("hf-hub:", "").rstrip("/")).name.split(".")[0]


def _load_local(name: str, path: Path, weights: Weights) -> LoadedModel:
    folder = path if path.is_dir() else path.parent
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise CaitError(f"{path} has no {CONFIG_NAME} beside its weights; cait needs it to know the "
                        "architecture (timm layout: architecture, model_args, pretrained_cfg)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CaitError(f"cannot read {config_file}: {err}") from err
    if is_cait_config(config):
        model = load_checkpoint(folder)  # weights are the point of a compressed checkpoint
        base = config["model_args"]
        return LoadedModel(model, name, str(folder), base["base_architecture"], base.get("base_args", {}))
    if not path.is_dir() and path.suffix != ".safetensors":
        raise CaitError(f"{path} is not a safetensors file or a model directory")
    return _load_timm(name, f"local-dir:{folder}", weights)


def _load_timm(name: str, source: str, weights: Weights) -> LoadedModel:
    pretrained = weights == "pretrained"
    try:
        model = timm.create_model(source, pretrained=pretrained)
    except Exception as err:  # timm and the Hub raise many types; each gets one line
        raise CaitError(_explain_load_error(name, source, err, pretrained)) from err
    if is_cait(model):
        return LoadedModel(model, name, source, model.pretrained_cfg.get("architecture", "cait_vit"), {}, weights)
    architecture = model.pretrained_cfg.get("architecture") or source
    return LoadedModel(model, name, source, architecture, _serialisable_args(model), weights)


def _serialisable_args(model: nn.Module) -> Dict[str, Any]:
    """Constructor keywords that rebuild this timm model (recorded by timm itself)."""
    args = get_model_args(model, {})
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()
            if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}


def _hub_location(source: str) -> str:
    """Where timm looks for `source` on the Hub, for error messages."""
    if source.startswith("hf-hub:"):
        return f"Hub repository {source[len('hf-hub:'):]}"
    try:
        hub_id = timm.models.get_pretrained_cfg(source).hf_hub_id
    except Exception:  # unknown tags have no config
        hub_id = None
    return f"Hub repository {hub_id}" if hub_id else source


def _explain_load_error(name: str, source: str, err: Exception, pretrained: bool) -> str:
    kind = type(err).__name__
    source = _hub_location(source)
    hint = ("pass a local directory holding model.safetensors and config.json, "
            "or --weights random for a speed study")
    if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
        return f"cannot load {name!r}: {source} was not found (or needs access); {hint}"
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "EntryNotFoundError") or is_network_error(err):
        return (f"cannot load {name!r}: tried {source}, which is not in the Hugging Face cache, and the "
                f"Hub cannot be reached (offline); {hint}")
    if isinstance(err, RuntimeError) and "Unknown model" in str(err):
        return f"unknown model {name!r}: {source} is not a timm architecture"
    return f"cannot load {name!r} from {source}: {first_line(err)}"
