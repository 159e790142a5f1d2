"""Save a slim model as safetensors + config.json; load it back in a fresh process."""
import json
import os
import re
from pathlib import Path

import pytest
import torch

from cait_cli.errors import CaitError
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, set_budget
from cait_cli.method.model import patch_vit
from cait_cli.method.slim import slim
from cait_cli.models.checkpoint import read_config, save_checkpoint
from cait_cli.models.loading import _serialisable_args
from cait_cli.models.spec import CaitSpec

from support import run_python


def slim_checkpoint(make_vit, tmp_path, name="deit_tiny_distilled_patch16_224"):
    model = make_vit(name)
    base_args = _serialisable_args(model)
    patch_vit(model, alternating_schedule([1, 2], (8, 8)))
    attach_gates(model)
    set_budget(model, 0.5)
    slim(model)
    path = tmp_path / "ckpt"
    save_checkpoint(model, path, CaitSpec.of(model, name, base_args), {"base_model": f"timm/{name}"})
    return model, path


def test_a_full_disk_is_one_line_with_the_space_needed_and_leaves_nothing(make_vit, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full_disk(tensors, path, metadata=None):  # part of the file written, then the disk is full
        Path(path).write_bytes(b"the first bytes")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr("cait_cli.models.checkpoint.save_file", full_disk)
    with pytest.raises(CaitError) as refused:
        slim_checkpoint(make_vit, tmp_path)
    assert re.fullmatch(rf"cannot write {re.escape(str(tmp_path / 'ckpt'))}: Error while serializing: .*StorageFull.*"
                        r" \(needs [\d.]+ [KM]B, [\d.]+ [KMGT]B free there\)", str(refused.value)), refused.value
    assert list(tmp_path.iterdir()) == []  # no temporary folder, no checkpoint


def test_config_records_everything_needed_to_rebuild(make_vit, tmp_path):
    model, path = slim_checkpoint(make_vit, tmp_path)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "cait_vit" and config["num_classes"] == 7
    args = config["model_args"]
    assert args["base_architecture"] == "deit_tiny_distilled_patch16_224"
    assert args["merge_schedule"] == [[1, "w"], [2, "h"]]
    assert len(args["widths"]) == 4 and args["widths"][0][2] < 768
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert {"mean", "std"} <= set(config["pretrained_cfg"])
    assert config["cait"]["base_model"] == "timm/deit_tiny_distilled_patch16_224"


def test_reload_in_fresh_process_with_cait_load_and_timm(make_vit, tmp_path):
    model, path = slim_checkpoint(make_vit, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    code = f"""
import timm, torch, cait_cli
x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})
a = cait_cli.load({str(path)!r})
b = timm.create_model('local-dir:{path}', pretrained=True).eval()
with torch.no_grad():
    print(float((a(x) - y).abs().max()), float((b(x) - y).abs().max()), type(b).__name__)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    err_a, err_b, cls = result.stdout.split()
    assert float(err_a) < 1e-6 and float(err_b) < 1e-6 and cls == "CaitVisionTransformerDistilled"


def test_existing_output_is_refused_then_replaced_atomically(make_vit, tmp_path):
    model, path = slim_checkpoint(make_vit, tmp_path)
    spec = CaitSpec.of(model, "deit_tiny_distilled_patch16_224", {})
    with pytest.raises(CaitError, match="already exists"):
        save_checkpoint(model, path, spec, {})
    save_checkpoint(model, path, spec, {"note": "second"}, overwrite=True)
    assert json.loads((path / "config.json").read_text())["cait"]["note"] == "second"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_nothing_behind(make_vit, tmp_path, monkeypatch):
    model, _ = slim_checkpoint(make_vit, tmp_path)
    import cait_cli.models.checkpoint as checkpoint

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(CaitError, match="No space left"):
        save_checkpoint(model, tmp_path / "new", CaitSpec.of(model, "x", {}), {})
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_config_rejects_what_is_not_a_checkpoint(make_vit, tmp_path):
    with pytest.raises(CaitError, match="not a directory"):
        read_config(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaitError, match="needs config.json"):
        read_config(tmp_path / "empty")
    _, path = slim_checkpoint(make_vit, tmp_path)
    (path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    with pytest.raises(CaitError, match="not a cait checkpoint"):
        read_config(path)


def test_weights_that_do_not_match_the_config_are_one_clear_error(make_vit, tmp_path):
    _, path = slim_checkpoint(make_vit, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_args"]["widths"][0][2] += 1
    (path / "config.json").write_text(json.dumps(config))
    from cait_cli import load
    with pytest.raises(CaitError, match="does not match its config.json"):
        load(str(path))


def test_whole_model_pickles_for_torch_save_in_a_fresh_process(make_vit, tmp_path):
    model, _ = slim_checkpoint(make_vit, tmp_path)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.save({"model": model, "x": x}, tmp_path / "whole.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    code = f"""
import torch
saved = torch.load({str(tmp_path / 'whole.pt')!r}, weights_only=False)
y = torch.load({str(tmp_path / 'y.pt')!r})
model = saved["model"]
with torch.no_grad():
    print(float((model(saved["x"]) - y).abs().max()), type(model).__name__)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    err, cls = result.stdout.split()
    assert float(err) < 1e-6 and cls == "CaitVisionTransformerDistilled"
