"""Runtimes: every CPU runtime runs a CAIT model as PyTorch does, and compress plans, lands and
reports under the runtime asked for. GPU-only runtimes are tested on a GPU."""
import functools
import json
from pathlib import Path

import pytest
import torch
from support import make_image_folder, save_tiny_timm_dir, synthetic_table, tiny_vit
from typer.testing import CliRunner

from cait_cli.interface.cli import app
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.variants import compressed_variant
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.measuring import runtimes
from cait_cli.pipeline.measuring.runtimes import Forwards, build_forward
from cait_cli.pipeline.planning import latency

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
CPU_RUNTIMES = ("eager", "compile", "onnxruntime")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture(autouse=True)
def dynamo_without_codegen(monkeypatch):
    """torch.compile traces the whole graph as in use (fullgraph: a graph break fails), but runs the
    traced graph without inductor's C++ code generation, which takes minutes on 2 cores; the
    runtimes benchmark compiles for real."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtimes")
    model_dir = save_tiny_timm_dir(root / "tiny", tiny_vit(**ARGS), ARGS)
    return {"model": str(model_dir), "data": str(make_image_folder(root / "data", classes=3, per_class=4))}


def first(output) -> torch.Tensor:
    return torch.as_tensor(output[0] if isinstance(output, list) else output)


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
@torch.inference_mode()
def test_a_compressed_model_runs_under_each_cpu_runtime_as_in_pytorch(runtime):
    base = tiny_vit(**ARGS)
    model = compressed_variant(base, alternating_schedule([1, 2], tuple(base.patch_embed.grid_size)), 0.6, 8).eval()
    images = torch.randn(4, 3, 32, 32)
    forward = build_forward(model, images, runtime, amp=False)
    assert torch.allclose(first(forward()), model(images), atol=1e-4)


def test_built_forwards_are_kept_until_forgotten(monkeypatch):
    built = []
    monkeypatch.setattr(runtimes, "build_forward", lambda model, images, rt, amp: built.append(model) or model)
    forwards, a, b = Forwards("eager"), torch.nn.Identity(), torch.nn.Identity()
    images = forwards.images(2, (3, 4, 4), torch.float32, torch.device("cpu"))
    assert forwards.images(2, (3, 4, 4), torch.float32, torch.device("cpu")) is images
    forwards.of(a, images), forwards.of(a, images), forwards.of(b, images)
    forwards.forget(a)
    forwards.of(a, images)
    assert built == [a, b, a]


@pytest.mark.parametrize("runtime", ["compile", "onnxruntime"])
def test_compress_plans_lands_and_reports_under_the_runtime(assets, tmp_path, monkeypatch, runtime):
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))
    monkeypatch.setattr("cait_cli.pipeline.planning.landing.MAX_MEASUREMENTS", 2)  # each builds two forwards
    out = tmp_path / "out.cait"
    cfg = CompressConfig(model=assets["model"], target_speedup=1.2, out=out, calib_steps=0, finetune_steps=0,
                         bench_batch_size=8, device="cpu", runtime=runtime)
    result = compress(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"] == runtime and runtime in report["precision"]
    assert 1 <= len(report["attempts"]) <= 2 and result.report["measured_speedup"] > 0
    assert json.loads((out / "config.json").read_text())["cait"]["runtime"] == runtime


def test_the_latency_table_is_keyed_by_and_fitted_under_the_runtime(monkeypatch, tmp_path):
    model = tiny_vit(**ARGS)
    keys = {rt: latency.table_key(model, torch.device("cpu"), 8, torch.float32, 8, runtime=rt) for rt in CPU_RUNTIMES}
    assert len(set(keys.values())) == len(CPU_RUNTIMES)
    seen = []

    def measure(models, input_size, cfg, device, *args, **kwargs):
        seen.append(cfg.runtime)
        raise RuntimeError("stop after the fit was asked for")

    monkeypatch.setattr(latency, "measure_throughput", measure)
    with pytest.raises(RuntimeError, match="stop after"):
        latency.calibrate_latency(model, torch.device("cpu"), 4, cache_dir=tmp_path, repeats=1, multiple=8,
                                  runtime="onnxruntime")
    assert seen == ["onnxruntime"]


@pytest.mark.parametrize("runtime,package", [("onnxruntime", "onnxruntime"), ("compile", None)])
def test_a_missing_runtime_package_is_one_line_and_exit_1(assets, tmp_path, monkeypatch, runtime, package):
    find_spec = runtimes.importlib.util.find_spec
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None if name == package else find_spec(name))
    args = ["compress", assets["model"], "--runtime", runtime if package else "tensorrt", "--device", "cpu",
            "--calib-steps", "0", "--finetune-steps", "0", "--out", str(tmp_path / "x.cait")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert ("pip install" in lines[0]) if package else ("needs a CUDA GPU" in lines[0])
    assert not (tmp_path / "x.cait").exists()


def test_an_onnx_file_is_timed_under_onnxruntime_only(assets, tmp_path):
    from cait_cli.pipeline.evaluate import EvalConfig, evaluate
    from cait_cli.pipeline.export.onnx_export import ExportConfig, export_file

    onnx_path = tmp_path / "m.onnx"
    export_file(ExportConfig(model=assets["model"], out=onnx_path, batch_size=4, weights="pretrained"))
    report = evaluate(EvalConfig(model=str(onnx_path), baseline=assets["model"], device="cpu", repeats=2, warmup=1))
    assert report["runtime"] == "onnxruntime" and report["speedup"] > 0
    result = CliRunner().invoke(app, ["eval", str(onnx_path), "--runtime", "compile", "--device", "cpu"])
    assert result.exit_code == 1 and "runs on ONNX Runtime" in result.output


@GPU
@pytest.mark.parametrize("runtime", ["cuda-graphs", "tensorrt"])
def test_compress_on_a_gpu_under_its_runtimes(assets, tmp_path, runtime):
    pytest.importorskip("torch_tensorrt") if runtime == "tensorrt" else None
    out = tmp_path / "gpu.cait"
    cfg = CompressConfig(model=assets["model"], target_speedup=1.2, out=out, calib_steps=0, finetune_steps=0,
                         device="cuda", runtime=runtime, latency_cache=Path(tmp_path / "cache"))
    compress(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"] == runtime and runtime in report["precision"]


@GPU
def test_the_gpu_default_runtime_is_cuda_graphs():
    assert runtimes.resolve_runtime("auto", torch.device("cuda")) == "cuda-graphs"
