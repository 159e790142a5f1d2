"""`cait export --format onnx`, `cait eval FILE.onnx` and `cait push --with-onnx`, on tiny ViTs."""
import json
import re
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from support import save_compressed_tiny
from typer.testing import CliRunner

import cait_cli
from cait_cli.errors import CaitError
from cait_cli.interface.cli import app
from cait_cli.interface.hub import push
from cait_cli.method.widths import block_widths
from cait_cli.models.loading import load_model
from cait_cli.models.onnx_model import load_onnx
from cait_cli.pipeline.evaluate import EvalConfig, evaluate
from cait_cli.pipeline.export.onnx_export import (
    ExportConfig,
    default_out,
    export,
    export_checked,
    random_batches,
)

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
QUICK = dict(repeats=2, warmup=1, check_images=8)
# The keys users read in `cait export --json` and cait_cli.export's dict: pinned, not to move unnoticed.
EXPORT_KEYS = {"model", "out", "format", "opset", "batch", "input_size", "tolerance", "max_difference",
               "checked_images", "file_mb", "results", "runtime", "device", "bench_batch_size", "threads",
               "repeats"}
SIDE_KEYS = {"params", "macs", "throughput", "throughput_min", "throughput_max"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain tiny ViT directory, its compressed checkpoint (two merges, pruned widths), images."""
    root = tmp_path_factory.mktemp("onnx")
    return {**save_compressed_tiny(root, ARGS, merge_blocks=[0, 2]), "root": root}


@pytest.fixture(scope="module")
def exported(models):
    """The compressed checkpoint exported at a fixed batch of 1, checked on real images, timed."""
    out = models["root"] / "small.onnx"
    report = export(ExportConfig(model=models["ckpt"], out=out, data=models["data"], baseline=models["base"], **QUICK))
    return out, report


def ort_logits(path, images: torch.Tensor) -> torch.Tensor:
    """Run the file with plain ONNX Runtime, as a user would."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def test_compressed_export_matches_pytorch_and_is_timed_against_the_baseline(models, exported):
    path, report = exported
    model = cait_cli.load(models["ckpt"])
    assert [w.mlp for w in block_widths(model)] != [4 * 48] * 4 and len(model.cait_schedule) == 2
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (ort_logits(path, images) - model(images)).abs().max() < 1e-4
    assert report["batch"] == 1 and report["checked_images"] == {"random": 1, "data": 8}
    assert max(report["max_difference"].values()) <= report["tolerance"] == 1e-4
    base, small = report["results"]["baseline"], report["results"]["model"]
    assert small["macs"] < base["macs"] and small["params"] < base["params"]
    assert base["max_difference"] < 1e-4 and report["speedup_range"][0] <= report["speedup"]
    written = report.to_json()
    assert set(written) == EXPORT_KEYS | {"speedup", "speedup_range"} and set(written["max_difference"]) == {
        "random", "data"}
    assert set(written["results"]["model"]) == SIDE_KEYS
    assert set(written["results"]["baseline"]) == SIDE_KEYS | {"max_difference"}


def test_plain_model_with_dynamic_batch_at_another_input_size(models, tmp_path):
    out = tmp_path / "plain.onnx"
    report = export(ExportConfig(model=models["base"], out=out, dynamic_batch=True, input_size=(48, 40), **QUICK))
    assert report["batch"] == "dynamic" and report["input_size"] == [3, 48, 40]
    assert report["checked_images"] == {"random": 4}  # batches of 1 and 3
    written = report.to_json()
    assert set(written) == EXPORT_KEYS and set(written["results"]) == {"model"}
    assert set(written["results"]["model"]) == SIDE_KEYS and json.loads(json.dumps(written)) == written
    reference = load_model(models["base"]).model
    reference.set_input_size(img_size=(48, 40))
    images = torch.randn(5, 3, 48, 40)
    with torch.no_grad():
        assert (ort_logits(out, images) - reference(images)).abs().max() < 1e-4


def test_fixed_batch_file_takes_any_batch_in_cait(models, exported):
    path, _ = exported
    onnx_model, model = load_onnx(path), cait_cli.load(models["ckpt"])
    assert onnx_model.fixed_batch == 1 and onnx_model.pretrained_cfg["input_size"] == [3, 32, 32]
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (onnx_model(images) - model(images)).abs().max() < 1e-4


def test_refuses_a_file_whose_outputs_differ_and_leaves_the_old_one(models, tmp_path):
    model = cait_cli.load(models["ckpt"])
    # the exported graph is the true model; eager PyTorch answers 0.5 higher afterwards
    model.register_forward_hook(lambda m, i, out: out if torch.compiler.is_exporting() else out + 0.5)
    out = tmp_path / "small.onnx"
    out.write_text("the previous file")
    checks = {"random": random_batches((3, 32, 32), 1, seed=0)}
    with pytest.raises(CaitError, match=r"differ from PyTorch's by up to 0\.5.*was not written"):
        export_checked(model, out, example=torch.zeros(1, 3, 32, 32), dynamic_batch=False, opset=18, meta={},
                       checks=checks, tolerance=1e-4, overwrite=True)
    assert out.read_text() == "the previous file" and [p.name for p in tmp_path.iterdir()] == ["small.onnx"]


def test_missing_extra_is_one_line_naming_it(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["export", models["ckpt"], "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert re.search(r"error: .*onnxruntime is missing.*pip install 'cait-cli\[onnx\]'", result.output)
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "2", "--dynamic-batch"], "not both"),
    (["--format", "tensorrt"], "unknown export format"),
    (["--opset", "13"], "too old"),
    (["--tolerance", "-1"], "zero or more"),
    (["--input-size", "0", "32"], "two positive numbers"),
])
def test_cli_bad_options(models, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["export", models["ckpt"], "--out", str(tmp_path / "x.onnx"), *extra])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_default_out_is_named_after_the_model():
    assert [default_out(n) for n in ("runs/fashion.cait/", "deit_small", "hf-hub:org/vit.v2")] == [
        Path("fashion.onnx"), Path("deit_small.onnx"), Path("vit.onnx")]


def test_cli_refuses_to_overwrite_and_to_export_onnx(models, exported):
    path, _ = exported
    for args, message in (([models["ckpt"], "--out", str(path)], "already exists"),
                          ([str(path)], "already an ONNX file")):
        result = CliRunner().invoke(app, ["export", *args])
        assert result.exit_code == 1 and message in result.output


def test_cli_export_prints_check_and_speed_and_writes_json(models, tmp_path):
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["export", models["ckpt"], "--out", str(out), "--batch-size", "4",
                                      "--repeats", "2", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "max |ONNX Runtime - PyTorch|" in result.output and "throughput" in result.output
    written = json.loads(report.read_text())
    assert written["batch"] == 4 and written["bench_batch_size"] == 4 and out.is_file()


def test_eval_of_an_onnx_file_agrees_with_its_checkpoint(models, exported):
    path, _ = exported
    report = evaluate(EvalConfig(model=str(path), data=models["data"], baseline=models["ckpt"], workers=0,
                                 repeats=2, warmup=1))
    onnx_side, torch_side = report["results"]["model"], report["results"]["baseline"]
    assert onnx_side["agreement"] == 1.0 and onnx_side["top1"] == torch_side["top1"]
    assert onnx_side["params"] == torch_side["params"] and onnx_side["macs"] == torch_side["macs"]
    assert report["batch_size"] == 1 and report["device"] and report["speedup"] > 0
    with pytest.raises(CaitError, match="CPU provider"):
        evaluate(EvalConfig(model=str(path), device="cuda"))
    with pytest.raises(CaitError, match="exported ONNX file"):
        load_model(str(path))  # what compress does: it needs a PyTorch ViT


def test_push_with_onnx_uploads_a_checked_file_and_says_how_to_run_it(models, tmp_path):
    preview = tmp_path / "preview"
    result = push(models["ckpt"], "me/tiny-cait", dry_run=True, dry_run_out=preview, with_onnx=True)
    assert "model.onnx" in result.files and sorted(p.name for p in preview.iterdir()) == result.files
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ort_logits(preview / "model.onnx", images) - cait_cli.load(models["ckpt"])(images)).abs().max() < 1e-4
    card = (preview / "README.md").read_text()
    assert "## Run with ONNX Runtime" in card and 'hf_hub_download("me/tiny-cait", "model.onnx")' in card
    snippet = card.split("```python")[-1].split("```")[0]
    compile(snippet, "card", "exec")  # the card's ONNX Runtime example is valid Python
