"""The runtimes a model is timed under: one forward callable per runtime.

A speedup holds for the runtime that serves the model, so everything that times
(the planner's whole-model fit, every landing measurement, the final report, `cait
eval`) builds its forwards here:

- eager: PyTorch as is.
- cuda-graphs: the forward captured once in a CUDA graph and replayed (GPU).
- compile: torch.compile (inductor; on a GPU its CUDA-graph mode, reduce-overhead).
- tensorrt: Torch-TensorRT's dynamo path (GPU, package torch-tensorrt).
- onnxruntime: the project's ONNX export run by ONNX Runtime (CPU provider, or CUDA
  with onnxruntime-gpu).

Building a forward (compiling, capturing, exporting, building an engine) is warm-up
and never timed. ONNX Runtime and TensorRT have no adapter that runs an nn.Module
as a timed callable with warm-up kept apart, hence these few lines per runtime.
"""
from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

from ...errors import CaitError, first_line
from ...models.onnx_file import write_onnx
from ...models.onnx_model import OnnxModel, cpu_session, require_onnx

Forward = Callable[[], object]
RUNTIMES = ("eager", "cuda-graphs", "compile", "tensorrt", "onnxruntime")
GPU_ONLY = ("cuda-graphs", "tensorrt")
# Chosen by measurement (benchmarks/results/runtimes_cpu.md, gpu_h200.md): on a GPU the small
# models are launch-bound in eager mode, so the eager ratio measures the host; CUDA graphs give
# repeatable ratios and cost nothing to build. On the CPU eager repeats as well as the others and
# plans in seconds instead of minutes of compiling or exporting every measured model.
DEFAULTS = {"cuda": "cuda-graphs", "cpu": "eager"}
PACKAGES = {"tensorrt": ("torch_tensorrt", "pip install torch-tensorrt (needs a CUDA GPU)"),
            "onnxruntime": ("onnxruntime", "pip install 'cait-cli[onnx]' (onnxruntime-gpu for a CUDA GPU)")}
WARMUP_CALLS = 3  # calls before a CUDA graph is captured: lazy initialisation, autotuning


def resolve_runtime(name: str, device: torch.device) -> str:
    """`name`, or the default for `device` when it is "auto"; CaitError when it cannot run here."""
    if name == "auto":
        return DEFAULTS[device.type]
    if name not in RUNTIMES:
        raise CaitError(f"unknown runtime {name!r}; use auto or one of {', '.join(RUNTIMES)}")
    if name in GPU_ONLY and device.type != "cuda":
        raise CaitError(f"--runtime {name} needs a CUDA GPU; this run measures on {device.type} "
                        f"(use eager, compile or onnxruntime there)")
    if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None:
        raise CaitError(f"--runtime {name} needs the package {PACKAGES[name][0]}: {PACKAGES[name][1]}")
    if name == "onnxruntime":
        require_onnx()  # the exporter's packages too
    return name


def block_runtime(runtime: str, device: torch.device) -> str:
    """What the planner times single block halves under, for a plan served by `runtime`.

    Compiling, exporting or building an engine for each of the table's ~80 block halves
    would take longer than the whole compression; the halves are timed without launch
    overhead where that is cheap (CUDA graphs on a GPU) and eagerly on the CPU. The
    table's fit to whole models, and every landing measurement, run under `runtime`
    itself, so these proxies only shape the prediction between measured points.
    """
    if runtime in ("eager", "cuda-graphs"):
        return runtime
    return "cuda-graphs" if device.type == "cuda" else "eager"


def precision(runtime: str, amp: bool) -> str:
    """What a report says the speedup was measured in."""
    dtype = "bf16" if amp and runtime != "onnxruntime" else "fp32"  # ONNX files are exported in fp32
    return f"{dtype}, {runtime}"


def build_forward(model: nn.Module, images: torch.Tensor, runtime: str, amp: bool) -> Forward:
    """A call that runs `model` on `images` once under `runtime`, built here (the caller warms it up)."""
    builders = {"eager": _eager, "cuda-graphs": _cuda_graph, "compile": _compiled, "tensorrt": _tensorrt,
                "onnxruntime": _onnxruntime}
    return builders[runtime](model.eval(), images, amp)


class Forwards:
    """Built forwards kept per model, so a model timed again (the original, at every landing
    measurement) is not compiled or exported again. Holds the random input each was built on:
    a captured graph or a bound ONNX input reads from that tensor's memory."""

    def __init__(self, runtime: str = "eager", amp: bool = False) -> None:
        self.runtime, self.amp = runtime, amp
        self._inputs: Dict[Tuple, torch.Tensor] = {}
        self._built: Dict[Tuple, Tuple[nn.Module, Forward]] = {}
        self._build_seconds: Dict[int, float] = {}  # id(model): wall time its forwards took to build

    def images(self, batch: int, input_size: Tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        key = (batch, tuple(input_size), dtype, str(device))
        if key not in self._inputs:
            self._inputs[key] = torch.randn(batch, *input_size, device=device, dtype=dtype)
        return self._inputs[key]

    def of(self, model: nn.Module, images: torch.Tensor) -> Forward:
        key = (id(model), tuple(images.shape), images.dtype, str(images.device))
        if key not in self._built:  # the model is held too, so its id is not reused while cached
            start = time.perf_counter()
            self._built[key] = (model, build_forward(model, images, self.runtime, self.amp))
            self._build_seconds[id(model)] = self.build_seconds(model) + time.perf_counter() - start
        return self._built[key][1]

    def build_seconds(self, model: nn.Module) -> float:
        """How long building `model`'s forwards took (compiling, capturing, exporting; 0 if none were)."""
        return self._build_seconds.get(id(model), 0.0)

    def forget(self, model: nn.Module) -> None:
        """Drop `model`'s forwards (a model that will not be timed again)."""
        self._built = {k: v for k, v in self._built.items() if v[0] is not model}
        self._build_seconds.pop(id(model), None)


def _autocast(images: torch.Tensor, amp: bool, cache: bool = True):
    return torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache)


def _eager(model: nn.Module, images: torch.Tensor, amp: bool) -> Forward:
    def forward():
        with _autocast(images, amp):
            return model(images)
    return forward


def _cuda_graph(model: nn.Module, images: torch.Tensor, amp: bool) -> Forward:
    def forward():  # autocast's weight cache cannot outlive a graph capture
        with _autocast(images, amp, cache=False):
            return model(images)
    return captured(forward, images.device)


def captured(call: Forward, device: torch.device) -> Forward:
    """`call` captured in a CUDA graph, replayed by the returned call: every kernel in one launch,
    so a small model at a large batch is timed by its GPU work instead of by the host launching its
    ops one by one. What `call` returns lives in the graph's memory; every replay rewrites it."""
    side = torch.cuda.Stream(device)  # capture wants warmed-up kernels, run off the default stream
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            output = call()
    except RuntimeError as err:
        raise CaitError(f"this model cannot be captured in a CUDA graph: {first_line(err)}") from err

    def replay():
        graph.replay()
        return output
    return replay


def _compiled(model: nn.Module, images: torch.Tensor, amp: bool) -> Forward:
    """torch.compile with static shapes and no graph breaks (a break would time eager pieces)."""
    mode = "reduce-overhead" if images.device.type == "cuda" else None
    compiled = torch.compile(model, mode=mode, dynamic=False, fullgraph=True)

    def forward():
        with _autocast(images, amp):
            return compiled(images)
    # every measured model is new to dynamo: lift its recompile limit while this one compiles
    with torch._dynamo.config.patch(recompile_limit=1024), _quiet():
        try:
            forward()
        except Exception as err:  # dynamo and inductor raise many types; one line for the user
            raise CaitError(f"torch.compile cannot compile this model: {first_line(err)} "
                            "(use --runtime eager or onnxruntime)") from err
    return forward


def _tensorrt(model: nn.Module, images: torch.Tensor, amp: bool) -> Forward:
    import torch_tensorrt

    dtypes = {torch.bfloat16} if amp else {torch.float32}
    try:
        with _quiet():
            engine = torch_tensorrt.compile(model, ir="dynamo", arg_inputs=[images], enabled_precisions=dtypes)
    except Exception as err:  # Torch-TensorRT raises many types; one line for the user
        raise CaitError(f"Torch-TensorRT cannot build an engine for this model: {first_line(err)} "
                        "(use --runtime cuda-graphs or compile)") from err
    return lambda: engine(images)


def _onnxruntime(model: nn.Module, images: torch.Tensor, amp: bool) -> Forward:
    """The model exported as `cait export` writes it (fixed batch, fp32), run by ONNX Runtime.
    An exported file (OnnxModel) runs in its own session, as `cait eval FILE.onnx` loaded it."""
    if isinstance(model, OnnxModel):
        return lambda: model(images)
    with tempfile.TemporaryDirectory(prefix="cait-runtime-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model, path, images.float(), dynamic_batch=False, opset=18, meta={})
        session = cpu_session(path) if images.device.type == "cpu" else _cuda_session(path)  # graph in memory
    name = session.get_inputs()[0].name
    if images.device.type == "cpu":
        array = images.float().numpy()
        return lambda: session.run(None, {name: array})
    return _bound_cuda_run(session, name, images.float().contiguous())


def _cuda_session(path: Path):
    _, ort = require_onnx()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CaitError("--runtime onnxruntime on a GPU needs ONNX Runtime's CUDA provider: "
                        "pip install onnxruntime-gpu")
    return ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])


def _bound_cuda_run(session, name: str, images: torch.Tensor) -> Forward:
    """ONNX Runtime's CUDA provider reading the input where torch keeps it (no host copies)."""
    import numpy as np

    binding = session.io_binding()
    binding.bind_input(name, "cuda", images.device.index or 0, np.float32, tuple(images.shape), images.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda", images.device.index or 0)
    return lambda: session.run_with_iobinding(binding)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
