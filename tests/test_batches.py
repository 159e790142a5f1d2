"""Training batches by step: the same images and augmentations whoever decodes them."""
import torch
from support import make_image_folder, tiny_vit

from cait_cli.pipeline.data.batches import StepBatches
from cait_cli.pipeline.data.sources import (
    collate_skipping,
    open_data,
    resolve_data_config,
)


def batches(tmp_path, **kwargs):
    make_image_folder(tmp_path, classes=2, per_class=6, splits=("train",))
    data = open_data(str(tmp_path), resolve_data_config(tiny_vit()), batch_size=4, train_augment=True)
    return StepBatches(data.train, 4, seed=1, collate=collate_skipping, **kwargs)


def steps(source, start, stop):
    return [(step, images, labels) for step, (images, labels) in source.iterate(start, stop, torch.device("cpu"))]


def test_workers_and_a_resumed_start_see_the_same_augmented_batches(tmp_path):
    alone = steps(batches(tmp_path), 0, 5)
    with_workers = steps(batches(tmp_path, workers=2), 2, 5)  # resumed at step 2, decoded by two workers
    assert [s for s, _, _ in with_workers] == [2, 3, 4]
    for (_, a, la), (_, b, lb) in zip(alone[2:], with_workers):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(alone[0][1], alone[3][1])  # augmentation differs from step to step


def test_two_ranks_split_the_global_batch_of_one_process(tmp_path):
    whole = steps(batches(tmp_path / "a"), 0, 3)
    dataset = batches(tmp_path / "b").dataset
    parts = [steps(StepBatches(dataset, 2, 1, collate_skipping, rank=r, world=2), 0, 3) for r in (0, 1)]
    for step in range(3):
        joined = torch.cat([parts[0][step][1], parts[1][step][1]])
        assert torch.equal(joined, whole[step][1])


def test_each_epoch_is_shuffled_once_and_in_the_same_order_as_asked_afresh(tmp_path, monkeypatch):
    source = batches(tmp_path)  # 12 images, batch 4: 3 steps an epoch
    fresh = [StepBatches(source.dataset, 4, 1, collate_skipping).indices(step) for step in range(7)]
    shuffles = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: shuffles.append(1) or real(*a, **k))
    kept = [source.indices(step) for step in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh))
    assert len(shuffles) == 3  # epochs 0, 1 and 2, not one shuffle a step
    assert not torch.equal(source.order(0), source.order(1))
