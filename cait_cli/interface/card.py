"""The model card (README.md) that `cait push` uploads beside a compressed checkpoint."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from ..pipeline.reports.compress import CompressReport
from ..pipeline.reports.export import ExportReport, Int8Report, OnnxCheck
from ..pipeline.training.teacher import ORIGINAL

TAGS = ["image-classification", "timm", "cait", "vision-transformer", "token-merging", "pruning"]


def _fmt(value: Optional[float], spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "—" if value is None else f"{value * scale:{spec}}{suffix}"


def _hub_id(name: Optional[str]) -> Optional[str]:
    """`name` if it looks like a Hub repository id (ORG/NAME, optional hf-hub: prefix)."""
    if not name:
        return None
    name = name.removeprefix("hf-hub:")
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def front_matter(config: Dict[str, Any]) -> str:
    cait = config.get("cait", {})
    lines = ["---", "library_name: timm", "pipeline_tag: image-classification"]
    license_ = config.get("pretrained_cfg", {}).get("license") or cait.get("license")
    if license_:
        lines.append(f"license: {license_}")
    base = _hub_id(cait.get("base_model"))
    if base:
        lines.append(f"base_model: {base}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in TAGS]
    lines.append("---")
    return "\n".join(lines)


def results_table(report: Optional[CompressReport]) -> str:
    if report is None:
        return "No `report.json` was found beside the checkpoint, so no measurements are shown."
    base, comp, timing = report.baseline, report.compressed, report.timing
    rows = [  # label, what it reads, format, scale, suffix
        ("params (M)", lambda s: s.params, ".2f", 1e-6, ""),
        ("GMACs", lambda s: s.macs, ".2f", 1e-9, ""),
        ("throughput (img/s)", lambda s: s.throughput, ".1f", 1.0, ""),
        ("top-1", lambda s: s.top1, ".2f", 100.0, "%"),
        ("top-5", lambda s: s.top5, ".2f", 100.0, "%"),
        ("agreement with original", lambda s: s.agreement, ".2f", 100.0, "%"),
    ]
    if comp.feature_cosine is not None:  # a headless model: features, not classes
        rows.append(("feature cosine to original", lambda s: s.feature_cosine, ".4f", 1.0, ""))
    lines = ["| | original | compressed |", "|---|---|---|"]
    for label, read, spec, scale, suffix in rows:
        lines.append(f"| {label} | {_fmt(read(base), spec, scale, suffix)} | "
                     f"{_fmt(read(comp), spec, scale, suffix)} |")
    lines.append("")
    lines.append(f"Target speedup {report.target_speedup:g}x, measured {report.measured.ratio:.2f}x on "
                 f"{timing.device or '—'} (batch {timing.batch_size or '—'}, {timing.precision}): throughput of this "
                 "model over the original's, measured interleaved in one run.")
    return "\n".join(lines)


def architecture(config: Dict[str, Any]) -> str:
    args = config.get("model_args", {})
    merges = ", ".join(f"after block {b} ({'columns' if a == 'w' else 'rows'})"
                       for b, a in args.get("merge_schedule", [])) or "none"
    widths: List[List[int]] = args.get("widths", [])
    width_text = "; ".join(f"{i}: {qk}/{v}/{mlp}" for i, (qk, v, mlp) in enumerate(widths))
    return (f"- base architecture: `{args.get('base_architecture', '?')}`\n"
            f"- token merges (ATME): {merges}\n"
            f"- kept widths per block (q/k per head, v per head, MLP hidden): {width_text}")


def onnx_section(config: Dict[str, Any], onnx: Optional[OnnxCheck], repo_id: str) -> str:
    """How to run model.onnx, with the preprocessing it expects; empty when there is none."""
    if onnx is None:
        return ""
    data = config.get("pretrained_cfg", {})
    _, height, width = onnx.input_size
    worst = max(onnx.max_difference.values())
    return f"""
## Run with ONNX Runtime

`model.onnx` (opset {onnx.opset}, any batch size, input `images` of shape (B, 3, {height}, {width}),
output `logits`) was exported by `cait push --with-onnx` from these weights and checked against
PyTorch: the logits differ by at most {worst:.2g}. It needs neither PyTorch nor cait:

```python
import numpy as np
import onnxruntime as ort
from huggingface_hub import hf_hub_download

session = ort.InferenceSession(hf_hub_download("{repo_id}", "model.onnx"), providers=["CPUExecutionProvider"])
# images: float32 (B, 3, {height}, {width}), RGB scaled to [0, 1], resized and centre-cropped as
# timm does ({data.get('interpolation', 'bicubic')}, crop_pct {data.get('crop_pct', 0.875)}), then normalised:
mean = np.array({list(data.get('mean', [0.485, 0.456, 0.406]))}, dtype=np.float32).reshape(1, 3, 1, 1)
std = np.array({list(data.get('std', [0.229, 0.224, 0.225]))}, dtype=np.float32).reshape(1, 3, 1, 1)
logits = session.run(None, {{"images": (images - mean) / std}})[0]  # (B, {config.get('num_classes', 'classes')})
```

TensorRT builds an engine from the same file, e.g.
`trtexec --onnx=model.onnx --minShapes=images:1x3x{height}x{width} --optShapes=images:32x3x{height}x{width} \
--maxShapes=images:256x3x{height}x{width}`.
"""


def int8_section(export: Optional[ExportReport]) -> str:
    """What model.int8.onnx keeps of the fp32 file's accuracy and how fast it ran, as measured by
    `cait export --quantize int8` (its report); empty when there is none."""
    if export is None or export.int8 is None:
        return ""
    int8, results, timing = export.int8, export.results, export.timing
    verdict, kept = int8.verdict, ", ".join(int8.keep_fp32) or "nothing"
    if verdict.compared is not None:
        top1 = verdict.compared.top1
        accuracy = (f"On {verdict.images}, it agrees with the fp32 file on "
                    f"{_fmt(verdict.compared.agreement['fp32'], '.2f', 100.0, '%')} of the top-1 classes; top-1 "
                    f"{_fmt(top1.get('int8'), '.2f', 100.0, '%')} against {_fmt(top1.get('fp32'), '.2f', 100.0, '%')} "
                    f"for fp32 (checked by {verdict.checked_by}: at most {int8.max_drop:g} pt lower).")
    else:
        accuracy = ("Its accuracy was not measured (no images were given): a sanity check on random images found "
                    f"its logits within {verdict.random_check.relative_error:.2g} of the largest fp32 logit.")
    return f"""
## int8 (`model.int8.onnx`)

Quantized by ONNX Runtime ({_int8_method(int8)}; {kept} kept in fp32) from
`model.onnx`, and run the same way. {accuracy}

Under ONNX Runtime on {timing.device} ({timing.threads} threads, batch {timing.batch_size}) it ran
{results['model'].throughput:.1f} images/s against {results['fp32'].throughput:.1f} for `model.onnx`
({export.int8_speedup.ratio:.2f}x, measured interleaved).
"""


def model_card(config: Dict[str, Any], report: Optional[CompressReport], repo_id: str,
               onnx: Optional[OnnxCheck] = None, int8: Optional[ExportReport] = None) -> str:
    """README.md for the Hub; `report` (the checkpoint's report.json) adds the measurements, `onnx`
    (model.onnx as checked) how to run model.onnx, `int8` (the report of `cait export --quantize
    int8`) what model.int8.onnx measured."""
    base = config.get("cait", {}).get("base_model", "the original model")
    made_by = config.get("cait", {}).get("cait_cli_version")  # the version that wrote the checkpoint
    made_with = "[cait](https://pypi.org/project/cait-cli/)" + (f" {made_by}" if made_by else "")
    return f"""{front_matter(config)}

# {repo_id.split('/')[-1]}

A compressed version of `{base}`, made with {made_with}:
asymmetric token merging (ATME) of neighbouring patch tokens, which keeps the tokens on a
regular grid, and consistent dynamic channel pruning (CDCP), which removes the same channels in
every attention head, then slices the weights into smaller layers.

## Speed and accuracy

{results_table(report)}

## Architecture

{architecture(config)}

## How it was made

`cait compress` planned a merge schedule and channel budget from latencies measured on the
device, learned the channel scores with distillation from {_teacher(report)}, slimmed the
weights and fine-tuned the result. The plan and all measurements are in `report.json`.

## How to use

```bash
pip install cait-cli
```

```python
import cait_cli  # registers the cait_vit architecture with timm
import timm

model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
# or: model = cait_cli.load("hf-hub:{repo_id}")
features = model.forward_grid(images)  # (B, C, H', W') patch features on the merged grid
dense = model.unmerge(features)        # back to the full token grid, for dense heads
```
{onnx_section(config, onnx, repo_id)}{int8_section(int8)}"""


def _teacher(report: Optional[CompressReport]) -> str:
    """The model the compressed one learned from, as report.json's training names it."""
    training = report.training if report is not None else None
    if training is None or training.teacher in (None, ORIGINAL):
        return "the original model"
    return f"`{training.teacher}`"


def _int8_method(int8: Int8Report) -> str:
    """How the int8 file was made, and why that way when both were tried."""
    how = ("static quantization, QDQ int8 calibrated on images" if int8.method == "static"
           else "dynamic quantization: int8 weights, activations quantized as they run")
    raced = int8.raced()
    if len(raced) > 1:
        how += f"; chosen as the faster of {' and '.join(raced)} that kept the accuracy"
    return how
