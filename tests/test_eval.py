"""`cait eval`: accuracy, agreement and interleaved speed, on the terminal and as JSON."""
import json

import pytest
from typer.testing import CliRunner

from cait_cli.errors import CaitError
from cait_cli.interface.cli import app
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, set_budget
from cait_cli.method.model import patch_vit
from cait_cli.method.slim import slim
from cait_cli.models.checkpoint import save_checkpoint
from cait_cli.models.loading import load_model
from cait_cli.models.spec import CaitSpec
from cait_cli.pipeline.evaluate import EvalConfig, evaluate

from support import make_image_folder, save_tiny_timm_dir, tiny_vit

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base_dir = save_tiny_timm_dir(root / "base", tiny_vit(**ARGS), ARGS)
    loaded = load_model(str(base_dir))
    model = loaded.model
    patch_vit(model, alternating_schedule([1], (8, 8)))
    attach_gates(model)
    set_budget(model, 0.5)
    slim(model)
    ckpt = save_checkpoint(model, root / "small.cait", CaitSpec.of(model, loaded.architecture, loaded.model_args),
                           {"base_model": str(base_dir)})
    data = make_image_folder(root / "data", classes=3, per_class=4)
    return {"base": str(base_dir), "ckpt": str(ckpt), "data": str(data)}


def quick(**kw) -> EvalConfig:
    return EvalConfig(**{"batch_size": 8, "device": "cpu", "workers": 0, "repeats": 3, "warmup": 1, **kw})


def test_eval_with_baseline_reports_accuracy_agreement_and_speedup(models):
    report = evaluate(quick(model=models["ckpt"], data=models["data"], baseline=models["base"]))
    model, base = report["results"]["model"], report["results"]["baseline"]
    assert model["images"] == 12 and 0.0 <= model["top1"] <= 1.0 and model["top5"] is None  # 3 classes
    assert 0.0 <= model["agreement"] <= 1.0 and base["agreement"] is None
    assert model["macs"] < base["macs"] and model["params"] < base["params"]
    low, high = report["speedup_range"]
    assert low <= report["speedup"] <= high
    assert report["batch_size"] == 8 and report["precision"] == "fp32"


def test_eval_of_itself_agrees_fully(models):
    report = evaluate(quick(model=models["base"], data=models["data"], baseline=models["base"]))
    assert report["results"]["model"]["agreement"] == 1.0
    assert report["results"]["model"]["top1"] == report["results"]["baseline"]["top1"]


def test_eval_speed_only_without_data(models):
    report = evaluate(quick(model=models["ckpt"]))
    assert "top1" not in report["results"]["model"] and report["results"]["model"]["throughput"] > 0


def test_cli_prints_table_and_writes_json(models, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", models["ckpt"], "--data", models["data"], "--baseline",
                                      models["base"], "--batch-size", "8", "--workers", "0", "--repeats", "3",
                                      "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "speedup" in result.output
    assert json.loads(out.read_text())["results"]["model"]["images"] == 12


@pytest.mark.parametrize("kw,message", [
    ({"model": "no_such_model"}, "unknown model"),
    ({"data": "/nonexistent/folder"}, "does not exist"),
    ({"device": "cuda:7"}, "no CUDA GPU"),
])
def test_eval_bad_input(models, kw, message):
    with pytest.raises(CaitError, match=message):
        evaluate(quick(**{"model": models["ckpt"], **kw}))
