"""Labels train the head only when they are the model's classes; otherwise distillation alone."""
import json
import re
from pathlib import Path

import pytest
from ideal_latency import write_ideal_tables
from support import make_image_folder, save_tiny_timm_dir, tiny_vit
from typer.testing import CliRunner

from cait_cli.interface.cli import app
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.data.sources import labels_belong, open_data, resolve_data_config
from cait_cli.pipeline.progress import Silent

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)


def named_folder(root: Path, names) -> Path:
    make_image_folder(root / "made", classes=len(names), per_class=4)
    for split in ("train", "val"):
        for i, name in enumerate(names):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / "made" / split / f"class_{i}").rename(root / split / name)
    return root


def test_the_rule():
    assert labels_belong(["b", "a"], ["a", "b"], 2) is None  # the model's label names, any order
    assert "not the model's" in labels_belong(["x", "y"], ["a", "b"], 2)
    assert labels_belong(["n01", "n02", "n03"], None, 3) is None  # no names: exactly num_classes folders
    assert "10 classes and the model 3" in labels_belong([str(i) for i in range(10)], None, 3)
    assert "names no classes" in labels_belong(None, None, 3)


def test_three_classes_with_other_names_are_distillation_only(tmp_path):
    model = tiny_vit(num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["zebra", "ant", "moth"]}
    bundle = open_data(str(named_folder(tmp_path, ["cat", "dog", "owl"])), resolve_data_config(model),
                       batch_size=4, num_classes=3)
    assert not bundle.labelled and "not the model's 3 label names" in bundle.why_unlabelled
    assert {bundle.train[i][1] for i in range(len(bundle.train))} == {-1}
    assert {label for _, labels in bundle.val for label in labels.tolist()} == {-1}


def test_the_models_own_classes_keep_their_labels(tmp_path):
    bundle = open_data(str(make_image_folder(tmp_path, classes=3, per_class=2)), resolve_data_config(tiny_vit()),
                       batch_size=4, num_classes=3)
    assert bundle.labelled and bundle.why_unlabelled is None
    assert sorted({bundle.train[i][1] for i in range(len(bundle.train))}) == [0, 1, 2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return save_tiny_timm_dir(root / "tiny", tiny_vit(**ARGS), ARGS)


def test_more_classes_than_the_model_compresses_without_a_traceback(model_dir, tmp_path):
    """Before: IndexError: Target 4 is out of bounds. Now: distillation only, said in one line."""
    data = make_image_folder(tmp_path / "data", classes=5, per_class=4)
    write_ideal_tables(tmp_path / "cache" / "latency", tiny_vit(**ARGS), 16)
    result = CliRunner().invoke(app, ["compress", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                                      "--calib-steps", "2", "--finetune-steps", "2", "--batch-size", "8",
                                      "--bench-batch-size", "16", "--workers", "0", "--device", "cpu",
                                      "--target-speedup", "1.2", "--no-replan"], env={"CAIT_CACHE": str(tmp_path / "cache")})
    assert result.exit_code in (0, 3), result.output  # 3: the measured speed missed on a busy machine
    assert "Traceback" not in result.output and not isinstance(result.exception, IndexError)
    assert "5 classes and the model 3" in result.output
    assert re.search(r"top-1\s.*not applicable", result.output)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["training"]["labels"] == "not applicable"
    assert report["compressed"]["top1"] is None and report["compressed"]["agreement"] is not None


def test_a_refusal_writes_nothing(model_dir, tmp_path):
    data = make_image_folder(tmp_path / "data", classes=5, per_class=2)
    result = CliRunner().invoke(app, ["compress", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                                      "--workers", "-1"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("error: --workers")
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_differently_named_classes_train_without_cross_entropy(model_dir, tmp_path):
    data = named_folder(tmp_path / "data", ["cat", "dog", "owl", "emu"])  # 4 folders, a 3-class model
    messages = []

    class Recorder(Silent):
        def message(self, text):
            messages.append(text)

    cfg = CompressConfig(model=str(model_dir), target_speedup=1.2, out=tmp_path / "o", data=str(data),
                         calib_steps=2, finetune_steps=2, batch_size=8, bench_batch_size=16, workers=0,
                         device="cpu", replan=False,
                         latency_cache=write_ideal_tables(tmp_path / "latency", tiny_vit(**ARGS), 16))
    result = compress(cfg, Recorder())
    assert any("4 classes and the model 3" in m and "labels are ignored" in m for m in messages)
    assert result.report["baseline"]["top1"] is None and result.report["training"]["labels"] == "not applicable"


@pytest.fixture(scope="module")
def named_model_dir(tmp_path_factory):
    """A 3-class model whose config names its classes zebra, ant, moth."""
    path = save_tiny_timm_dir(tmp_path_factory.mktemp("named") / "tiny", tiny_vit(**ARGS), ARGS)
    config = json.loads((path / "config.json").read_text())
    config["pretrained_cfg"]["label_names"] = ["zebra", "ant", "moth"]
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("names,applies", [(["cat", "dog", "owl"], False), (["moth", "zebra", "ant"], True)])
def test_eval_scores_top1_only_on_the_models_own_classes(named_model_dir, tmp_path, names, applies):
    """The rule compress follows, in `cait eval`: other names are not applicable, the model's own in any order are."""
    import cait_cli

    report = cait_cli.evaluate(named_model_dir, data=named_folder(tmp_path / "data", names), batch_size=4,
                               workers=0, repeats=1, device="cpu")
    assert (report["results"]["model"]["top1"] is not None) == applies
    assert (report["labels_note"] is None) == applies
    if not applies:
        assert "not the model's 3 label names, so top-1/top-5 are not applicable" in report["labels_note"]
