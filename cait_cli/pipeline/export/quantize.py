"""`cait export --quantize int8`: ONNX Runtime's own quantization, checked for accuracy.

The fp32 file (already checked against PyTorch) is quantized by ONNX Runtime's tools:
static quantization in the QDQ format, calibrated on images the model has not been
checked on, or dynamic quantization (weights only; activations quantized at run time)
when there are no images. The int8 file is then compared with the fp32 one on held-out
images, prediction by prediction, and refused if its top-1 falls too far.

Which layers stay in fp32 is a list of layer groups (the patch embedding, the head, the
attention's activation-by-activation products) and ONNX op types (LayerNormalization,
...); the default was chosen by measurement on the bundled reference
(benchmarks/results/int8_layers_cpu.md).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from ...errors import CaitError, first_line
from ...models.onnx_model import require_onnx
from ..data.sources import Batches, loader, open_data, split_roots
from ..measuring.measure import logits_of

MODES = ("int8",)
STATIC, DYNAMIC = "static", "dynamic"
# How the int8 file is made. auto: with images, both ways, each checked, and the faster of those that
# keep the accuracy is written (int8_modes_cpu.md: on a CPU without VNNI dynamic ran 1.13-1.17x static;
# with VNNI static usually wins); without images, dynamic (nothing to calibrate on).
METHODS = ("auto", STATIC, DYNAMIC)
# Layer groups found by their place in the graph; anything else in keep_fp32 is an ONNX op type.
GROUPS = ("patch_embed", "head", "attention")
DEFAULT_KEEP_FP32 = ("patch_embed", "head", "LayerNormalization")  # measured: int8_layers_cpu.md
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Images per calibration run. ORT folds each run into the ranges (strided MinMax), so it holds
# one run's activations at a time (about 80 MB an image for DeiT-S).
CALIBRATION_BATCH = 8
HELD_OUT_BATCH = 32
SANITY_ERROR = 0.5  # without images: the largest logit error allowed, over the largest fp32 logit


@dataclass
class Int8Settings:
    keep_fp32: Tuple[str, ...] = DEFAULT_KEEP_FP32  # layer groups and op types left in fp32
    per_channel: bool = True  # one scale per output channel of each weight
    reduce_range: bool = False  # 7-bit weights: avoids overflow on CPUs without VNNI, costs accuracy


@dataclass
class Int8Check:
    """Predictions of the int8 file against the fp32 file (and the original) on held-out images."""
    images: int
    labelled: int
    top1: Dict[str, Optional[float]] = field(default_factory=dict)  # per model: "int8", "fp32", "baseline"
    agreement: Dict[str, float] = field(default_factory=dict)  # int8's agreement with "fp32", "baseline"


@dataclass
class RandomCheck:
    """The int8 file against the fp32 file on random images: its largest logit error, over the largest
    fp32 logit, and the share of top-1 classes they agree on."""
    images: int
    relative_error: float
    agreement: float


@dataclass
class Int8Verdict:
    """What the int8 file was checked on and how far it fell below fp32 (check_int8)."""
    random_check: RandomCheck
    checked_by: str  # drop_of's measure ("top-1", "agreement with fp32"), or the random images' sanity check
    drop: Optional[float] = None  # points below fp32; None: accuracy not measured (no images)
    images: Optional[str] = None  # what it was compared on (Int8Images.described)
    compared: Optional[Int8Check] = None  # the predictions compared on those images
    labels_note: Optional[str] = None  # why top-1 does not apply, when it does not

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"random_check": asdict(self.random_check), "checked_by": self.checked_by}
        if self.compared is not None:
            out.update(drop=self.drop, images=self.images, compared_images=self.compared.images,
                       labelled_images=self.compared.labelled, top1=self.compared.top1,
                       agreement=self.compared.agreement, labels_note=self.labels_note)
        return out


@dataclass
class Int8Images:
    """Images to calibrate on and other images to compare on, and where each came from."""
    calibration: List[torch.Tensor]
    held_out: Batches
    described: str  # "128 images of ROOT/train (calibration), 500 of ROOT/val (comparison)"
    labels_note: Optional[str] = None  # why top-1 does not apply, when it does not


def parse_keep_fp32(text: str) -> Tuple[str, ...]:
    """"patch_embed,head,LayerNormalization" -> a tuple; "none" -> (). CaitError for a bad name."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    for name in names:
        if name not in GROUPS and not (name[:1].isupper() and name.isalnum()):
            raise CaitError(f"--int8-keep {name!r} is neither a layer group ({', '.join(GROUPS)}) nor an ONNX "
                            "op type such as LayerNormalization")
    return names


def initializer_names(graph: Any) -> Set[str]:
    return {init.name for init in graph.initializer}


def group_nodes(graph: Any, group: str) -> List[str]:
    """Names of the nodes of a layer group: the patch embedding is the Conv on the input image,
    the head the last Gemm or MatMul, the attention the MatMuls of two activations."""
    weights = initializer_names(graph)
    inputs = {value.name for value in graph.input}
    if group == "patch_embed":
        return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    if group == "head":
        products = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
        return products[-1:]
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def nodes_to_exclude(graph: Any, keep_fp32: Sequence[str]) -> List[str]:
    return [name for group in keep_fp32 if group in GROUPS for name in group_nodes(graph, group)]


def op_types_to_quantize(graph: Any, keep_fp32: Sequence[str], registry: Iterable[str]) -> List[str]:
    """The op types of the graph that ONNX Runtime can quantize, less those kept in fp32."""
    present = {n.op_type for n in graph.node}
    return sorted(present & set(registry) - set(keep_fp32))


class ImageReader:
    """Calibration images for ONNX Runtime (its CalibrationDataReader protocol, with the ranges
    that strided calibration asks for), each batch chunked to the file's fixed batch if it has one."""

    def __init__(self, batches: Sequence[torch.Tensor], input_name: str, fixed_batch: Optional[int]) -> None:
        chunks = [part for images in batches for part in images.split(fixed_batch or CALIBRATION_BATCH)]
        self.feeds = [{input_name: part.float().contiguous().numpy()} for part in chunks
                      if fixed_batch is None or part.shape[0] == fixed_batch]
        self.set_range(0, len(self.feeds))

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.feeds[start_index:end_index])

    def get_next(self) -> Optional[Dict[str, Any]]:
        return next(self.pending, None)

    def rewind(self) -> None:
        self.set_range(0, len(self.feeds))


def input_of(graph: Any) -> Tuple[str, Optional[int]]:
    """(name, fixed batch or None) of the graph's image input."""
    value = graph.input[0]
    batch = value.type.tensor_type.shape.dim[0]
    return value.name, (batch.dim_value if batch.HasField("dim_value") else None)


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended step before quantizing: shape inference and graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def quantize_static_file(src: Path, dst: Path, batches: Sequence[torch.Tensor], settings: Int8Settings) -> None:
    """QDQ int8 (uint8 activations, int8 weights: the fast pair on x86), ranges from `batches`."""
    onnx, _ = require_onnx()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    graph = onnx.load(str(src)).graph
    name, fixed_batch = input_of(graph)
    reader = ImageReader(batches, name, fixed_batch)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types_to_quantize(graph, settings.keep_fp32, QDQRegistry),
                    nodes_to_exclude=nodes_to_exclude(graph, settings.keep_fp32),
                    per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"CalibStridedMinMax": 1})


def quantize_dynamic_file(src: Path, dst: Path, settings: Int8Settings) -> None:
    """int8 weights, activations quantized per batch at run time: no images needed."""
    onnx, _ = require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src)).graph
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types_to_quantize(graph, settings.keep_fp32,
                                                                                   WEIGHT_OPS),
                     nodes_to_exclude=nodes_to_exclude(graph, settings.keep_fp32),
                     per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                     weight_type=QuantType.QInt8)


def copy_metadata(src: Path, dst: Path) -> None:
    """The cait.* metadata (input size, preprocessing, source) of `src` onto `dst`."""
    onnx, _ = require_onnx()
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(src)).metadata_props)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a warning per LayerNorm weight it leaves per-tensor; hide them."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def candidates(method: str, has_images: bool) -> List[str]:
    """The ways to quantize that `method` asks for (CaitError for static without images)."""
    if method not in METHODS:
        raise CaitError(f"unknown int8 method {method!r}; use one of {', '.join(METHODS)}")
    if method == STATIC and not has_images:
        raise CaitError("static int8 calibrates on images: pass --data (or --int8-method dynamic)")
    if method == "auto":
        return [STATIC, DYNAMIC] if has_images else [DYNAMIC]
    return [method]


def quantize_file(src: Path, dst: Path, calibration: Optional[Sequence[torch.Tensor]],
                  settings: Int8Settings, method: Optional[str] = None) -> str:
    """Write the int8 version of the fp32 file `src` to `dst`; returns the method used: "static"
    (calibrated on `calibration`) or "dynamic"; None: static when there are calibration images."""
    method = method or (STATIC if calibration else DYNAMIC)
    with tempfile.TemporaryDirectory(prefix="cait-int8-") as tmp, quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        try:
            preprocess(src, prepared)
            if method == STATIC:
                quantize_static_file(prepared, dst, calibration, settings)
            else:
                quantize_dynamic_file(prepared, dst, settings)
            copy_metadata(src, dst)
        except CaitError:
            raise
        except Exception as err:  # ORT's quantizer and onnx raise many types; one line for the user
            raise CaitError(f"ONNX Runtime could not quantize the model to int8: {first_line(err)}") from err
    return method


@torch.inference_mode()
def predictions(models: Dict[str, nn.Module], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]
                ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Top-1 class of every model for every image (one pass over the images), and the labels."""
    preds: Dict[str, List[torch.Tensor]] = {name: [] for name in models}
    labels: List[torch.Tensor] = []
    for images, targets in batches:
        for name, model in models.items():
            preds[name].append(logits_of(model(images)).argmax(-1))
        labels.append(targets)
    if not labels:
        raise CaitError("no images to compare the int8 file on")
    return {name: torch.cat(p) for name, p in preds.items()}, torch.cat(labels)


def compare(models: Dict[str, nn.Module], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Int8Check:
    """Top-1 of each model (on labelled images) and the agreement of "int8" with the others."""
    preds, labels = predictions(models, batches)
    known = labels >= 0
    labelled = int(known.sum())
    top1 = {name: float((p == labels)[known].float().mean()) if labelled else None for name, p in preds.items()}
    agreement = {name: float((preds["int8"] == p).float().mean()) for name, p in preds.items() if name != "int8"}
    return Int8Check(images=int(labels.numel()), labelled=labelled, top1=top1, agreement=agreement)


def drop_of(check: Int8Check) -> Tuple[float, str]:
    """How far (in points) the int8 file falls below fp32, and by what: top-1 when the images
    have the model's labels, else disagreement with the fp32 file's predictions."""
    if check.labelled:
        return 100 * (check.top1["fp32"] - check.top1["int8"]), "top-1"
    return 100 * (1 - check.agreement["fp32"]), "agreement with fp32"


def enforce(check: Int8Check, max_drop: float, out: Path, described: str) -> None:
    """CaitError (one line) if the int8 file falls more than `max_drop` points below fp32."""
    drop, measure = drop_of(check)
    if not drop <= max_drop:  # also refuses NaN
        raise CaitError(f"int8 {measure} falls {drop:.2f} pt below fp32 on {described} (--max-drop {max_drop:g}); "
                        f"{out} was not written")


def relative_error(int8: nn.Module, fp32: nn.Module, batches: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """(largest |int8 - fp32| over the logits' largest |fp32|, top-1 agreement) on `batches`."""
    with torch.inference_mode():
        pairs = [(int8(images), fp32(images)) for images in batches]
    error = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in pairs)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in pairs) / sum(b.shape[0] for _, b in pairs)
    return error, agree


def int8_images(source: str, data_cfg: Dict[str, Any], *, calib_images: int, compare_images: int,
                num_classes: Optional[int], workers: int = 0, seed: int = 0) -> Int8Images:
    """Calibration images from `source`'s train/ split and comparison images from its val/ split;
    a source without the two splits is split here (seeded), so no image does both jobs."""
    bundle = open_data(source, data_cfg, batch_size=HELD_OUT_BATCH, workers=workers, seed=seed,
                       max_val=compare_images, num_classes=num_classes)
    train_root, val_root = split_roots(source)
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out, held_from = bundle.val, val_root
    if held_out is None:
        if len(order) < 2:
            raise CaitError(f"{source} has {len(order)} image; int8 needs images to calibrate on and others "
                            "to check on")
        calib_images = min(calib_images, len(order) // 2)
        rest = torch.utils.data.Subset(bundle.train, order[calib_images:calib_images + compare_images])
        held_out, held_from = loader(rest, HELD_OUT_BATCH, workers), f"{source}, not those calibrated on"
    chosen = torch.utils.data.Subset(bundle.train, sorted(order[:calib_images]))
    calibration = [images for images, _ in loader(chosen, CALIBRATION_BATCH, workers)]
    count = sum(images.shape[0] for images in calibration)
    described = (f"{count} images of {train_root} (calibration), {len(held_out.dataset)} of {held_from} "
                 "(comparison)")
    note = bundle.why_unlabelled if bundle.why_unlabelled or bundle.labelled else "the images have no labels"
    return Int8Images(calibration, held_out, described, note)


def check_int8(models: Dict[str, nn.Module], images: Optional[Int8Images], random: Sequence[torch.Tensor],
               max_drop: float, out: Path) -> Int8Verdict:
    """Compare models["int8"] with models["fp32"] (and models["baseline"]) and refuse a file that
    falls more than `max_drop` points below fp32; what was compared, for the report."""
    error, agree = relative_error(models["int8"], models["fp32"], random)
    random_check = RandomCheck(sum(b.shape[0] for b in random), error, agree)
    if images is None:
        if not error <= SANITY_ERROR:
            raise CaitError(f"int8 logits on random images are off by {error:.2g} of the largest fp32 logit "
                            f"(sanity limit {SANITY_ERROR:g}); {out} was not written")
        return Int8Verdict(random_check, "random images (a sanity check; accuracy not measured: no --data)")
    check = compare(models, images.held_out)
    enforce(check, max_drop, out, images.described)
    drop, measure = drop_of(check)
    return Int8Verdict(random_check, measure, drop, images.described, check, images.labels_note)
