"""Data: folders of images, corrupt files, clear errors."""
import os
from pathlib import Path

import pytest
import torch
from support import make_image_folder, tiny_vit

from cait_cli.errors import CaitError
from cait_cli.pipeline.data.batches import StepBatches
from cait_cli.pipeline.data.sources import (
    collate_skipping,
    eval_loader,
    open_data,
    resolve_data_config,
    scan_folder,
)


@pytest.fixture
def data_cfg():
    return resolve_data_config(tiny_vit())


def test_image_folder_with_train_and_val(tmp_path, data_cfg):
    make_image_folder(tmp_path, classes=3, per_class=4)
    bundle = open_data(str(tmp_path), data_cfg, batch_size=5, workers=0)
    assert bundle.labelled and bundle.classes == ["class_0", "class_1", "class_2"]
    assert len(bundle.train) == 12
    images, labels = next(iter(bundle.val))
    assert images.shape == (5, 3, 32, 32) and labels.tolist()[:4] == [0, 0, 0, 0]


def test_flat_folder_is_unlabelled(tmp_path, data_cfg):
    make_image_folder(tmp_path, classes=1, per_class=3, splits=("x",))
    flat = tmp_path / "x" / "class_0"
    bundle = open_data(str(flat), data_cfg, batch_size=2, workers=0)
    assert not bundle.labelled and bundle.val is None
    assert bundle.train[0][1] == -1


def test_corrupt_images_are_skipped_and_counted(tmp_path, data_cfg):
    make_image_folder(tmp_path, classes=2, per_class=3)
    (tmp_path / "val" / "class_0" / "zz_broken.png").write_bytes(os.urandom(64))
    loader, _ = eval_loader(str(tmp_path), data_cfg, batch_size=4)
    seen = sum(len(labels) for _, labels in loader)
    assert seen == 6 and loader.skipped == 1


def test_step_batches_are_seeded_and_resumable(tmp_path, data_cfg):
    make_image_folder(tmp_path, classes=2, per_class=5)
    dataset = open_data(str(tmp_path), data_cfg, batch_size=4).train
    a = StepBatches(dataset, 4, seed=3, collate=collate_skipping)
    b = StepBatches(dataset, 4, seed=3, collate=collate_skipping)
    c = StepBatches(dataset, 4, seed=4, collate=collate_skipping)
    assert torch.equal(a.indices(7), b.indices(7)) and not torch.equal(a.indices(0), c.indices(0))
    assert torch.equal(a.batch(5)[0], b.batch(5)[0])
    epoch = torch.cat([a.indices(s) for s in range(a.per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # no image twice within an epoch


def test_data_errors_are_one_line(tmp_path, data_cfg):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no images found"),
             (tmp_path / "file.txt", "not a folder")]
    for source, message in cases:
        with pytest.raises(CaitError, match=message):
            open_data(str(source), data_cfg, batch_size=2)
    make_image_folder(tmp_path / "mismatch", classes=2, per_class=2)
    os.rename(tmp_path / "mismatch" / "val" / "class_1", tmp_path / "mismatch" / "val" / "other")
    with pytest.raises(CaitError, match="differ from the training classes"):
        open_data(str(tmp_path / "mismatch"), data_cfg, batch_size=2)


def test_unreadable_folder(tmp_path, monkeypatch):
    import cait_cli.pipeline.data.sources as data

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data.os, "scandir", denied)
    with pytest.raises(CaitError, match="permission denied"):
        scan_folder(tmp_path)


def test_class_folders_follow_the_models_label_names(tmp_path):
    """Folder names sort alphabetically; a model trained with other indices must still score."""
    model = tiny_vit(num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["zebra", "ant", "moth"]}
    cfg = resolve_data_config(model)
    assert cfg["label_names"] == ["zebra", "ant", "moth"]
    root = tmp_path / "data"
    make_image_folder(tmp_path / "made", classes=3, per_class=1, splits=("all",))
    for i, name in enumerate(("ant", "moth", "zebra")):
        root.mkdir(exist_ok=True)
        (tmp_path / "made" / "all" / f"class_{i}").rename(root / name)
    bundle = open_data(str(root), cfg, batch_size=4)
    assert bundle.classes == ["zebra", "ant", "moth"]
    assert {Path(p).parent.name: label for p, label in bundle.train.items} == {"zebra": 0, "ant": 1, "moth": 2}
    other = open_data(str(root), resolve_data_config(tiny_vit(num_classes=3)), batch_size=4)
    assert other.classes == ["ant", "moth", "zebra"]  # no label names: folder order, as ImageFolder
