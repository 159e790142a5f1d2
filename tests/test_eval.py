"""`cait eval`: accuracy, agreement and interleaved speed, on the terminal and as JSON."""
import json
import re

import pytest
import torch
from support import save_compressed_tiny
from typer.testing import CliRunner

from cait_cli.errors import CaitError
from cait_cli.interface.cli import app
from cait_cli.models.loading import load_model
from cait_cli.pipeline.evaluate import EvalConfig, evaluate
from cait_cli.pipeline.measuring.runtimes import build_forward

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_compressed_tiny(tmp_path_factory.mktemp("eval"), ARGS, merge_blocks=[1])


# The keys users read in `cait eval --json` and cait_cli.evaluate's dict: pinned, not to move unnoticed.
TIMING_KEYS = {"device", "batch_size", "precision", "runtime", "repeats", "threads"}
SPEED_KEYS = {"params", "macs", "throughput", "throughput_min", "throughput_max", "peak_memory_mb"}
ACCURACY_KEYS = {"top1", "top5", "agreement", "feature_cosine", "images"}


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
    assert report["batch_size"] == 8 and report["precision"] == "fp32, eager" and report["runtime"] == "eager"
    written = report.to_json()
    assert set(written) == {"model", "baseline", "data", "input_size", "labels_note", "skipped_images", "results",
                            "speedup", "speedup_range"} | TIMING_KEYS
    assert all(set(side) == SPEED_KEYS | ACCURACY_KEYS for side in written["results"].values())
    assert json.loads(json.dumps(written)) == written  # plain data


def test_eval_of_itself_agrees_fully(models):
    report = evaluate(quick(model=models["base"], data=models["data"], baseline=models["base"]))
    assert report["results"]["model"]["agreement"] == 1.0
    assert report["results"]["model"]["top1"] == report["results"]["baseline"]["top1"]


def test_eval_speed_only_without_data(models):
    report = evaluate(quick(model=models["ckpt"]))
    assert "top1" not in report["results"]["model"] and report["results"]["model"]["throughput"] > 0
    written = report.to_json()
    assert set(written) == {"model", "baseline", "data", "input_size", "results"} | TIMING_KEYS
    assert set(written["results"]) == {"model"} and set(written["results"]["model"]) == SPEED_KEYS


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
    ({"runtime": "cuda-graphs"}, "--runtime cuda-graphs needs a CUDA GPU"),
    ({"runtime": "tensorrt"}, "--runtime tensorrt needs a CUDA GPU"),
    ({"runtime": "jit"}, "unknown runtime 'jit'"),
])
def test_eval_bad_input(models, kw, message):
    with pytest.raises(CaitError, match=message):
        evaluate(quick(**{"model": models["ckpt"], **kw}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_compressed_model_replays_from_a_cuda_graph_as_it_runs_eagerly(models):
    model = load_model(models["ckpt"]).model.cuda().eval()
    with torch.inference_mode():
        images = torch.randn(4, 3, 32, 32, device="cuda")
        eager = model(images)
        replay = build_forward(model, images, "cuda-graphs", amp=False)
        images.copy_(torch.randn_like(images))  # the graph reads the same input tensor, new values
        assert torch.allclose(replay(), model(images), atol=1e-4) and not torch.allclose(replay(), eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_eval_times_cuda_graphs_against_the_baseline(models):
    report = evaluate(quick(model=models["ckpt"], baseline=models["base"], device="cuda", runtime="cuda-graphs"))
    low, high = report["speedup_range"]
    assert low <= report["speedup"] <= high and report["precision"] == "bf16, cuda-graphs"


def fruit_folder(root):
    """Two class folders, apple/ and pear/: not the 3-class model's classes."""
    from support import make_image_folder

    made = make_image_folder(root / "made", classes=2, per_class=3, splits=("val",))
    for i, name in enumerate(("apple", "pear")):
        (root / "val").mkdir(parents=True, exist_ok=True)
        (made / "val" / f"class_{i}").rename(root / "val" / name)
    return root


def test_eval_on_foreign_class_folders_reports_top1_not_applicable(models, tmp_path):
    """Before: "top1": 0.0, scored against labels the model never had. Now: one line, and not applicable."""
    out, data = tmp_path / "r.json", fruit_folder(tmp_path / "fruit")
    result = CliRunner().invoke(app, ["eval", models["ckpt"], "--data", str(data), "--baseline", models["base"],
                                      "--batch-size", "8", "--workers", "0", "--repeats", "3", "--device", "cpu",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert re.search(r"top-1\s.*not applicable", result.output) and re.search(r"top-5\s.*not applicable", result.output)
    line = "the data has 2 classes and the model 3, so top-1/top-5 are not applicable"
    assert result.output.count(line) == 1
    report = json.loads(out.read_text())
    model, base = report["results"]["model"], report["results"]["baseline"]
    assert model["top1"] is None and model["top5"] is None and base["top1"] is None
    assert 0.0 <= model["agreement"] <= 1.0 and model["images"] == 6
    assert "2 classes and the model 3" in report["labels_note"]


def test_eval_without_a_baseline_says_not_applicable_in_its_table(models, tmp_path):
    result = CliRunner().invoke(app, ["eval", models["ckpt"], "--data", str(fruit_folder(tmp_path / "fruit")),
                                      "--batch-size", "8", "--workers", "0", "--repeats", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert re.search(r"top-1\s.*not applicable", result.output) and "so top-1/top-5 are not applicable" in result.output


def test_eval_on_the_models_own_classes_scores_top1(models):
    report = evaluate(quick(model=models["ckpt"], data=models["data"]))
    assert report["labels_note"] is None and report["results"]["model"]["top1"] is not None
