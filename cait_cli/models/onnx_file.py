"""Write a PyTorch model to one self-contained ONNX file, with torch's own exporter
(`torch.onnx.export`, the torch.export-based one; the TorchScript exporter is deprecated).

`cait export` checks such a file against PyTorch before keeping it (pipeline/export/onnx_export.py);
`--runtime onnxruntime` times one (pipeline/measuring/runtimes.py); onnx_model.py reads one back.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from ..errors import CaitError, first_line
from .onnx_model import require_onnx

SINGLE_FILE_LIMIT = 2 * 2**30  # protobuf's limit on one ONNX file


def write_onnx(model: nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool, opset: int,
               meta: Dict[str, str]) -> None:
    """Export `model` (example: (B, 3, H, W)) to one self-contained ONNX file at `path`."""
    onnx, _ = require_onnx()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size >= SINGLE_FILE_LIMIT:
        raise CaitError(f"the model's weights take {size / 2**30:.1f} GB, over the 2 GB that one ONNX file holds")
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["images"], output_names=["logits"], dynamic_shapes=shapes)
        program.model.metadata_props.update(meta)
        program.save(str(path), external_data=False)
        onnx.checker.check_model(str(path))
    except CaitError:
        raise
    except Exception as err:  # torch.export and onnx raise many types; one line for the user
        raise CaitError(f"torch could not export the model to ONNX: {first_line(err)}") from err
