"""`cait export --quantize int8` and `cait push --with-onnx --quantize int8`, on a tiny trained ViT."""
import json
import re
import sys

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from support import make_image_folder, save_compressed_tiny, save_tiny_timm_dir, tiny_vit
from test_onnx import EXPORT_KEYS, SIDE_KEYS
from typer.testing import CliRunner

from cait_cli.errors import CaitError
from cait_cli.interface.cli import app
from cait_cli.interface.hub import push
from cait_cli.models.loading import load_model
from cait_cli.models.onnx_model import load_onnx
from cait_cli.pipeline.data.sources import dataset_from, eval_transform, resolve_data_config
from cait_cli.pipeline.export import quantize as int8
from cait_cli.pipeline.export.onnx_export import ExportConfig, default_out, export

ARGS = dict(img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3, num_classes=3)
QUICK = dict(repeats=1, warmup=0, check_images=8, bench_batch_size=4)
# The keys users read in `cait export --quantize int8 --json` and cait_cli.export's dict (beside those of
# test_onnx.EXPORT_KEYS): pinned, not to move unnoticed.
INT8_KEYS = {"precision", "quantize", "fp32_file_mb", "int8_speedup", "int8_speedup_range"}
QUANTIZE_KEYS = {"mode", "method", "int8_method", "tried", "keep_fp32", "max_drop", "random_check", "checked_by"}
COMPARED_KEYS = {"drop", "images", "compared_images", "labelled_images", "top1", "agreement", "labels_note"}


def images_of(folder, data_cfg):
    dataset = dataset_from(str(folder), eval_transform(data_cfg))
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained to tell the colour classes apart (a random one's logits are near ties,
    which no quantization keeps), its model directory, and the images."""
    root = tmp_path_factory.mktemp("int8")
    data = make_image_folder(root / "data", classes=3, per_class=16)
    model = tiny_vit(**ARGS).train()
    base = save_tiny_timm_dir(root / "untrained", model, ARGS)
    images, labels = images_of(data / "train", resolve_data_config(load_model(str(base)).model))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(40):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    compressed = save_compressed_tiny(root / "compressed", ARGS, merge_blocks=[1], model=model.eval())
    return {"model": compressed["base"], "ckpt": compressed["ckpt"], "data": str(data), "root": root}


def test_static_int8_agrees_with_pytorch_and_is_compared_with_fp32_and_the_original(trained):
    out = trained["root"] / "tiny.int8.onnx"
    report = export(ExportConfig(model=trained["model"], out=out, quantize="int8", data=trained["data"],
                                 baseline=trained["model"], int8_method="static", **QUICK))
    check = report["quantize"]
    assert check["method"] == "static" and check["checked_by"] == "top-1" and check["drop"] <= 1.0
    assert list(check["tried"]) == ["static"]
    assert "48 images of" in check["images"] and "/train (calibration)" in check["images"]
    assert "/val (comparison)" in check["images"] and check["compared_images"] == 48
    assert set(check["agreement"]) == {"fp32", "baseline"} and check["agreement"]["fp32"] >= 0.9
    assert report["runtime"] == "onnxruntime" and set(report["results"]) == {"model", "fp32", "baseline"}
    assert report["int8_speedup"] > 0 and report["precision"] == "int8" and report["file_mb"] < report["fp32_file_mb"]
    assert report["results"]["model"]["top1"] == check["top1"]["int8"]
    written = report.to_json()
    assert set(written) == EXPORT_KEYS | INT8_KEYS | {"speedup", "speedup_range"}
    assert set(written["quantize"]) == QUANTIZE_KEYS | COMPARED_KEYS
    assert set(written["quantize"]["tried"]["static"]) == {"images_per_second", "refused"}
    assert set(written["quantize"]["random_check"]) == {"images", "relative_error", "agreement"}
    assert set(written["results"]["model"]) == set(written["results"]["fp32"]) == SIDE_KEYS | {"top1"}
    assert set(written["results"]["baseline"]) == SIDE_KEYS | {"top1", "max_difference"}
    # the file runs in plain ONNX Runtime and keeps cait's metadata
    images, labels = images_of(trained["data"] + "/val", resolve_data_config(load_model(trained["model"]).model))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = load_model(trained["model"]).model(images).argmax(-1)
    got = torch.from_numpy(session.run(None, {"images": images[:1].numpy()})[0]).argmax(-1)
    assert got == expected[:1]
    assert (load_onnx(out)(images).argmax(-1) == expected).float().mean() >= 0.9
    assert load_onnx(out).pretrained_cfg["input_size"] == [3, 32, 32]


def test_broken_calibration_is_refused_and_nothing_is_written(trained, tmp_path, monkeypatch):
    """Calibration on constant images of raw pixel values (0-255, not normalised) sets ranges
    that clip every real image; the comparison with fp32 catches it."""
    real = int8.int8_images

    def constant(*args, **kwargs):
        images = real(*args, **kwargs)
        images.calibration = [torch.full_like(batch, 255.0) for batch in images.calibration]
        return images

    monkeypatch.setattr(int8, "int8_images", constant)
    out = tmp_path / "broken.onnx"
    out.write_text("the previous file")
    with pytest.raises(CaitError, match=r"int8 top-1 falls \d+\.\d\d pt below fp32 on .* was not written"):
        export(ExportConfig(model=trained["model"], out=out, quantize="int8", data=trained["data"], keep_fp32=(),
                            overwrite=True, int8_method="static", **QUICK))
    assert out.read_text() == "the previous file" and [p.name for p in tmp_path.iterdir()] == ["broken.onnx"]
    # auto tries dynamic too (no calibration), which keeps the accuracy: that file is written instead
    report = export(ExportConfig(model=trained["model"], out=out, quantize="int8", data=trained["data"],
                                 keep_fp32=(), overwrite=True, **QUICK))
    tried = report["quantize"]["tried"]
    assert report["quantize"]["method"] == "dynamic" and "was not written" in tried["static"]["refused"]
    assert tried["dynamic"]["refused"] is None and out.stat().st_size > 100


def test_auto_int8_writes_the_faster_of_static_and_dynamic(trained, tmp_path):
    out = tmp_path / "auto.onnx"
    report = export(ExportConfig(model=trained["model"], out=out, quantize="int8", data=trained["data"], **QUICK))
    check = report["quantize"]
    speeds = {m: t["images_per_second"] for m, t in check["tried"].items()}
    assert check["int8_method"] == "auto" and set(speeds) == {"static", "dynamic"}
    assert all(s > 0 for s in speeds.values()) and check["method"] == max(speeds, key=speeds.get)
    assert check["drop"] <= 1.0 and out.is_file()


def test_cli_dynamic_int8_without_data_says_accuracy_was_not_measured(trained, tmp_path):
    out, report = tmp_path / "dyn.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["export", trained["model"], "--out", str(out), "--quantize", "int8",
                                      "--repeats", "1", "--keep-fp32", "head,LayerNormalization",
                                      "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "int8 vs fp32 under ONNX Runtime" in result.output and "accuracy not measured" in result.output
    written = json.loads(report.read_text())
    assert written["quantize"]["method"] == "dynamic" and written["quantize"]["keep_fp32"] == ["head",
                                                                                             "LayerNormalization"]
    assert written["runtime"] == "onnxruntime" and out.is_file()
    assert set(written) == EXPORT_KEYS | INT8_KEYS and set(written["quantize"]) == QUANTIZE_KEYS
    assert set(written["results"]) == {"model", "fp32"} and set(written["results"]["model"]) == SIDE_KEYS


@pytest.mark.parametrize("extra,message", [
    (["--max-drop", "-1"], "--max-drop must be between 0 and 100"),
    (["--max-drop", "nan"], "--max-drop must be between 0 and 100"),
    (["--quantize", "int4"], "unknown --quantize 'int4'"),
    (["--calib-images", "0"], "at least 1"),
    (["--keep-fp32", "patch embed"], "neither a layer group"),
    (["--int8-method", "static"], "static int8 calibrates on images: pass --data"),
    (["--int8-method", "fastest"], "unknown int8 method 'fastest'"),
])
def test_cli_bad_int8_options(trained, tmp_path, extra, message):
    args = ["export", trained["model"], "--out", str(tmp_path / "x.onnx"), "--quantize", "int8", *extra]
    result = CliRunner().invoke(app, args[:-2] + extra if "--quantize" in extra else args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()


def test_missing_onnxruntime_is_one_line(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["export", trained["model"], "--out", str(out), "--quantize", "int8"])
    assert result.exit_code == 1 and not out.exists()
    assert re.search(r"error: .*onnxruntime is missing.*pip install 'cait-cli\[onnx\]'", result.output)
    assert len(result.output.strip().splitlines()) == 1


def test_default_out_and_keep_fp32_parsing():
    assert default_out("runs/fashion.cait", "int8").name == "fashion.int8.onnx"
    assert int8.parse_keep_fp32("none") == () and int8.parse_keep_fp32(" head , Softmax") == ("head", "Softmax")


def test_push_with_onnx_and_int8_states_its_accuracy_and_speed(trained, tmp_path):
    with pytest.raises(CaitError, match="pass both"):
        push(trained["ckpt"], "me/tiny", dry_run=True, quantize="int8")
    result = push(trained["ckpt"], "me/tiny", dry_run=True, dry_run_out=tmp_path / "p", with_onnx=True,
                  quantize="int8", data=trained["data"])
    assert {"model.onnx", "model.int8.onnx"} <= set(result.files)
    card = (tmp_path / "p" / "README.md").read_text()
    assert "## int8 (`model.int8.onnx`)" in card and re.search(r"(static|dynamic) quantization", card)
    assert "chosen as the faster of static and dynamic that kept the accuracy" in card
    assert re.search(r"top-1 \d+\.\d\d% against \d+\.\d\d% for fp32", card)
    assert re.search(r"ran\s+\d+\.\d images/s against \d+\.\d for `model.onnx`", card)
