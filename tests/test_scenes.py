"""The segmentation proof's scenes and scoring (benchmarks/scenes.py, benchmarks/segment_head.py)."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.scenes import NUM_CLASSES, SceneConfig, make_scenes  # noqa: E402
from benchmarks.segment_head import SceneSet, evaluate  # noqa: E402


def garments(count=20, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    images[:, 6:22, 8:20] = rng.integers(40, 256, size=(count, 16, 12))  # ink in the middle, black around
    return images, rng.integers(0, 10, size=count)


def test_scenes_are_deterministic_and_labelled_where_there_is_ink():
    images, labels = garments()
    cfg = SceneConfig(size=64, scale=2)
    scenes, masks = make_scenes(images, labels, 6, cfg, seed=3)
    again, again_masks = make_scenes(images, labels, 6, cfg, seed=3)
    other, _ = make_scenes(images, labels, 6, cfg, seed=4)
    assert np.array_equal(scenes, again) and np.array_equal(masks, again_masks) and not np.array_equal(scenes, other)
    assert scenes.shape == masks.shape == (6, 64, 64)
    assert np.array_equal(masks > 0, scenes >= cfg.ink)  # garment pixels are exactly the inked ones
    assert set(np.unique(masks)) <= set(range(NUM_CLASSES)) and (masks > 0).any(axis=(1, 2)).all()


def test_miou_of_a_perfect_and_of_a_constant_segmenter():
    images, labels = garments()
    scenes, masks = make_scenes(images, labels, 4, SceneConfig(size=64), seed=0)
    test = SceneSet(scenes, masks, 0.5, 0.5)

    def logits_for(predicted):
        return lambda x: torch.nn.functional.one_hot(predicted, NUM_CLASSES).permute(0, 3, 1, 2).float()

    perfect = evaluate(logits_for(torch.from_numpy(masks)), test, NUM_CLASSES, batch_size=4)
    assert perfect.miou == 1.0 and perfect.pixel_accuracy == 1.0
    background = evaluate(logits_for(torch.zeros_like(torch.from_numpy(masks))), test, NUM_CLASSES, batch_size=4)
    present = len(np.unique(masks))
    assert abs(background.miou - (masks == 0).mean() / present) < 1e-9


def test_a_head_trains_on_cached_features_of_a_frozen_backbone():
    from benchmarks.segment_head import FrozenBackbone, HeadConfig, Segmenter, features_of, fit_head
    from support import tiny_vit

    model = tiny_vit(img_size=32, patch_size=4, depth=2, embed_dim=16, num_heads=2, num_classes=3)
    images, labels = garments(count=12)
    scenes, masks = make_scenes(images, labels, 6, SceneConfig(size=32, scale=1), seed=0)
    train = SceneSet(scenes, masks, 0.3, 0.3)
    backbone = FrozenBackbone(model, [0, 1])
    features = features_of(backbone, train, batch_size=4)
    assert features.shape == (6, 32, 8, 8)  # two blocks of 16 channels on the 8x8 patch grid
    before = [p.clone() for p in model.parameters()]
    segmenter = Segmenter(backbone, fit_head(features, NUM_CLASSES, train, HeadConfig(steps=3, batch_size=4)))
    assert segmenter(train.batch([0, 1])[0]).shape == (2, NUM_CLASSES, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the backbone stayed frozen


def test_heads_over_seeds_score_on_cached_features_as_the_whole_segmenter_does():
    from benchmarks.segment import heads_over_seeds, miou_cell, SegRow
    from benchmarks.segment_head import FrozenBackbone, HeadConfig, Segmenter, evaluate
    from support import tiny_vit

    model = tiny_vit(img_size=32, patch_size=4, depth=2, embed_dim=16, num_heads=2, num_classes=3)
    images, labels = garments(count=12)
    train = SceneSet(*make_scenes(images, labels, 8, SceneConfig(size=32, scale=1), seed=0), 0.3, 0.3)
    test = SceneSet(*make_scenes(images, labels, 5, SceneConfig(size=32, scale=1), seed=1), 0.3, 0.3)
    backbone = FrozenBackbone(model, [0, 1])
    head, scores = heads_over_seeds(backbone, train, test, HeadConfig(steps=5, batch_size=4, lr=0.05), seeds=2)
    whole = evaluate(Segmenter(backbone, head).eval(), test, NUM_CLASSES, batch_size=2)
    assert len(scores) == 2 and abs(whole.miou - scores[0].miou) < 1e-9  # the first seed's head is returned
    assert (scores[0].miou, scores[0].pixel_accuracy) != (scores[1].miou, scores[1].pixel_accuracy)  # another head
    row = SegRow("cait", "x", miou=0.5, miou_seeds=[0.4, 0.6])
    assert miou_cell(row) == "50.00 (40.00-60.00)" and miou_cell(SegRow("a", "b", miou=0.5, miou_seeds=[0.5])) == "50.00"
