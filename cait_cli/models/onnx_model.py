"""An exported ONNX file run by ONNX Runtime, wrapped as an nn.Module.

The wrapper lets `cait eval` and the export check reuse the measuring code
written for PyTorch models (measure.py): it takes and returns torch tensors.
ONNX Runtime has no such adapter of its own, hence this one.

What the file needs besides its graph (input size, preprocessing, where it came
from) travels in the ONNX model's metadata_props under the `cait.` prefix.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import CaitError, first_line

EXTRA_HINT = "pip install 'cait-cli[onnx]'"
META_DATA_CFG = "cait.data_config"  # JSON: input_size, mean, std, interpolation, crop_pct, ...
META_SOURCE = "cait.source"  # what was exported: a checkpoint path, timm name or Hub id
META_PARAMS = "cait.params"
META_MACS = "cait.macs"


def require_onnx() -> Tuple[ModuleType, ModuleType]:
    """(onnx, onnxruntime), or CaitError naming the extra that provides them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as err:
        missing = getattr(err, "name", None) or "onnx"
        raise CaitError(f"ONNX support needs the optional packages onnx, onnxruntime and onnxscript "
                        f"({missing} is missing): {EXTRA_HINT}") from err
    return onnx, onnxruntime


def cpu_session(path: Path, threads: Optional[int] = None) -> Any:
    """An ONNX Runtime CPU session with as many intra-op threads as torch uses (a fair race),
    which do not spin while idle."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Idle ORT threads spin-wait by default, taking the cores from whatever runs next (PyTorch
    # timed interleaved, the other model); without spinning each run pays only for itself.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types; one line for the user
        raise CaitError(f"ONNX Runtime cannot load {path}: {first_line(err)}") from err


class OnnxModel(nn.Module):
    """Runs an ONNX image classifier: (B, 3, H, W) torch tensor -> (B, classes) logits.

    A file exported with a fixed batch takes any batch here: larger batches run in
    chunks, and a short last chunk is padded with zeros and the padding dropped.
    """

    def __init__(self, session: Any, path: Path) -> None:
        super().__init__()
        self.session, self.path = session, Path(path)
        entry = session.get_inputs()[0]
        self.input_name = entry.name
        batch = entry.shape[0]
        self.fixed_batch: Optional[int] = batch if isinstance(batch, int) else None
        meta = session.get_modelmeta().custom_metadata_map
        self.pretrained_cfg: Dict[str, Any] = json.loads(meta.get(META_DATA_CFG, "{}"))
        if "input_size" not in self.pretrained_cfg:
            self.pretrained_cfg["input_size"] = tuple(d if isinstance(d, int) else 0 for d in entry.shape[1:])
        self.num_classes = session.get_outputs()[0].shape[-1]
        self.source = meta.get(META_SOURCE)
        self.params = int(meta[META_PARAMS]) if META_PARAMS in meta else None
        self.macs = int(meta[META_MACS]) if META_MACS in meta else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chunk = self.fixed_batch or images.shape[0]
        outputs = [self._run(part) for part in images.split(chunk)]
        return torch.cat(outputs).to(images.device)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        if self.fixed_batch and n < self.fixed_batch:
            pad = images.new_zeros(self.fixed_batch - n, *images.shape[1:])
            images = torch.cat([images, pad])
        array = images.detach().float().cpu().contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits[:n])

    def extra_repr(self) -> str:
        return f"path={self.path}, batch={self.fixed_batch or 'dynamic'}"


def is_onnx_path(name: str) -> bool:
    return name.lower().endswith(".onnx")


def load_onnx(path: str | Path, threads: Optional[int] = None) -> OnnxModel:
    """An exported .onnx file as an OnnxModel (CaitError if it is missing or unreadable)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CaitError(f"ONNX file {path} does not exist")
    return OnnxModel(cpu_session(path, threads), path)
