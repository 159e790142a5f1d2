"""ViTs without a class token (average and attention pooling) and headless backbones."""
import copy

import pytest
import timm
import torch
from rich.console import Console

import cait_cli
from cait_cli.errors import CaitError
from cait_cli.interface.report import print_compress_report
from cait_cli.method.atme import MergeStep, alternating_schedule
from cait_cli.method.model import patch_vit
from cait_cli.pipeline.measuring.measure import measure_accuracy
from cait_cli.pipeline.planning.scoring import kl_score
from cait_cli.pipeline.reports.compress import CompressReport
from cait_cli.pipeline.training.train import (FEATURE_LOSS, LOGITS_LOSS, LogitsOnly, TrainConfig, distill_outputs,
                                              feature_loss, loss_name, make_optimizer, objective, train_step)

from support import save_compressed_tiny, tiny_vit
from test_slim import gated, slimmed_exactly

POOLS = {  # timm keywords of each family, on tiny_vit's 8x8 grid
    "gap": dict(class_token=False, global_pool="avg"),
    "map": dict(class_token=False, global_pool="map"),
    "gap_reg": dict(class_token=False, global_pool="avg", reg_tokens=2),  # prefix tokens, none a class token
}
MERGES = [1, 2]  # 8x8 -w-> 8x4 -h-> 4x4


def family_vit(family, **overrides):
    return tiny_vit(**POOLS[family], **overrides)


def paired_images(batch=2):
    """Images whose 2x2 blocks of 4-pixel patches are identical: merged pairs are equal tokens."""
    torch.manual_seed(1)
    return torch.randn(batch, 3, 4, 4).repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)


@pytest.mark.parametrize("family", POOLS)
def test_patched_model_that_merges_nothing_is_the_original(family):
    model = family_vit(family)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patched = patch_vit(copy.deepcopy(model))
        torch.testing.assert_close(patched(x), model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(patched.forward_features(x), model.forward_features(x), rtol=0, atol=1e-6)
    assert patched.cait_importance == "received"


@pytest.mark.parametrize("family", ["gap", "map"])
def test_merging_identical_neighbours_leaves_the_pooled_output_unchanged(family):
    model = family_vit(family)
    with torch.no_grad():
        model.pos_embed.zero_()  # positions would tell the equal patches apart
        x = paired_images()
        want = model(x)
        merged = patch_vit(copy.deepcopy(model), alternating_schedule(MERGES, (8, 8)))
        torch.testing.assert_close(merged(x), want, rtol=1e-4, atol=1e-5)
        tokens, pooled = merged.forward_full_tokens(x)
        torch.testing.assert_close(tokens, model.forward_features(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pooled, model.forward_head(model.forward_features(x), pre_logits=True),
                                   rtol=1e-4, atol=1e-5)
    assert merged.forward_tokens(x).x.shape[1] == 16  # the merges did happen


def test_pooling_weighs_tokens_by_the_patches_they_cover():
    model = patch_vit(family_vit("gap", img_size=28), [MergeStep(0, "w")])  # 7x7 -> 7x4, last column unpaired
    assert model.token_sizes(28).flatten().tolist() == [2.0, 2.0, 2.0, 1.0] * 7
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = model.forward_features(x)
        weighted, unweighted = model.forward_head(tokens), model.forward_head(tokens, size=torch.ones(1, 28, 1))
    assert torch.equal(weighted, model(x)) and not torch.allclose(weighted, unweighted)
    with pytest.raises(ValueError, match="pass size="):  # tokens of another grid need their sizes
        model.forward_head(tokens[:, :20])


@pytest.mark.parametrize("family", POOLS)
def test_gated_and_slimmed_models_agree(family):
    slimmed_exactly(gated(family_vit(family)))


@pytest.mark.parametrize("family", ["gap", "map"])
def test_dense_api_returns_full_grid_maps_at_a_non_square_size(family):
    model = patch_vit(family_vit(family), alternating_schedule(MERGES, (8, 8)))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True)
        tokens, pooled = model.forward_full_tokens(x)
    assert [tuple(m.shape) for m in maps] == [(2, 48, 8, 12)] * 4
    assert final.shape == (2, 4 * 6, 48) and model(x).shape == (2, 7)
    assert tokens.shape == (2, 96, 48) and pooled.shape == (2, 48)
    assert torch.equal(tokens.transpose(1, 2).reshape(2, 48, 8, 12), maps[-1])


@pytest.mark.parametrize("family", ["gap", "map"])
def test_checkpoint_round_trip_through_cait_load_and_timm(family, tmp_path):
    args = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3, **POOLS[family])
    paths = save_compressed_tiny(tmp_path, args, merge_blocks=[0, 2])
    model = cait_cli.load(paths["ckpt"])
    via_timm = timm.create_model(f"local-dir:{paths['ckpt']}", pretrained=True).eval()
    features = timm.create_model(f"local-dir:{paths['ckpt']}", pretrained=True, features_only=True,
                                 out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(via_timm(x), model(x))
        maps = features(x)
    assert model.cait_importance == "received" and model.attn_pool is (None if family == "gap" else model.attn_pool)
    assert [tuple(m.shape) for m in maps] == [(2, 48, 8, 12)] * 2


def test_map_model_exports_to_onnx_matching_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from cait_cli.pipeline.export.onnx_export import ExportConfig, export
    from test_onnx import ort_logits

    args = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3, **POOLS["map"])
    paths = save_compressed_tiny(tmp_path, args, merge_blocks=[0, 2])
    out = tmp_path / "small.onnx"
    export(ExportConfig(model=paths["ckpt"], out=out, data=paths["data"], baseline=paths["base"],
                        repeats=2, warmup=1, check_images=8))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (ort_logits(out, images) - cait_cli.load(paths["ckpt"])(images)).abs().max() < 1e-4


def test_importance_signal_is_chosen_and_checked():
    model = patch_vit(tiny_vit(), [MergeStep(1, "w")], importance="received")
    assert model.cait_importance == "received" and model.blocks[0].attn.importance_source == "received"
    patch_vit(model, [MergeStep(2, "w")])  # a new schedule keeps the signal
    assert model.blocks[3].attn.importance_source == "received"
    assert patch_vit(tiny_vit(), []).cait_importance == "cls"
    with pytest.raises(CaitError, match="no class token"):
        patch_vit(family_vit("gap"), importance="cls")
    with pytest.raises(CaitError, match="must be one of"):
        patch_vit(tiny_vit(), importance="max")


def token_cosine(student, teacher, images):
    with torch.no_grad():
        (tokens, _), (want, _) = distill_outputs(student, images), distill_outputs(teacher, images)
    return float(torch.nn.functional.cosine_similarity(tokens, want, dim=-1).mean())


@pytest.mark.parametrize("family", ["gap", "map"])
def test_headless_distillation_moves_final_tokens_toward_the_original(family):
    teacher = family_vit(family, num_classes=0)
    student = gated(copy.deepcopy(teacher), keep=0.5)
    assert loss_name(teacher) == FEATURE_LOSS and loss_name(tiny_vit()) == LOGITS_LOSS
    images, unlabelled = paired_images(8), torch.full((8,), -1)  # smooth images, as natural ones are
    with torch.no_grad():
        loss = objective(distill_outputs(student, images), distill_outputs(teacher, images), unlabelled)
    assert loss > 1e-3  # a real signal, not a KL over a softmax of features
    before = token_cosine(student, teacher, images)
    cfg = TrainConfig(steps=6)
    optimizer, wrapped = make_optimizer(student, cfg), LogitsOnly(student).train()  # as the training loop wraps it
    losses = [train_step(wrapped, teacher, images, unlabelled, optimizer, cfg, step) for step in range(cfg.steps)]
    assert token_cosine(student.eval(), teacher, images) > before
    assert losses[-1] < losses[0]


def test_planner_scores_a_headless_model_by_its_features():
    base = family_vit("gap", num_classes=0)
    score = kl_score(base, lambda: torch.randn(4, 3, 32, 32), multiple=1)
    assert score([], 1.0) < 1e-6  # nothing compressed: the original's own features
    assert score(alternating_schedule(MERGES, (8, 8)), 0.5) > 1e-3
    assert feature_loss(*[(torch.ones(1, 2, 3), torch.ones(1, 3))] * 2) < 1e-6


def test_accuracy_against_a_headless_baseline_is_the_feature_cosine():
    base = family_vit("gap", num_classes=0)
    images = [(paired_images(4), torch.full((4,), -1))]
    cpu = torch.device("cpu")
    same = measure_accuracy(copy.deepcopy(base), images, cpu, baseline=base)
    assert same.agreement is None  # an argmax over feature dimensions means nothing
    assert same.feature_cosine == pytest.approx(1.0, abs=1e-5)
    compressed = measure_accuracy(gated(copy.deepcopy(base), keep=0.5), images, cpu, baseline=base)
    assert compressed.feature_cosine < 0.999
    classifier = tiny_vit()
    labelled = measure_accuracy(copy.deepcopy(classifier), images, cpu, baseline=classifier)
    assert labelled.feature_cosine is None and labelled.agreement == 1.0


def test_compress_report_of_a_headless_model_names_the_feature_loss():
    console = Console(record=True, width=140)
    side = {"params": 1e6, "macs": 1e9, "throughput": 10.0}
    report = {"baseline": side, "compressed": {**side, "throughput": 19.0, "feature_cosine": 0.9731},
              "target_speedup": 1.9, "measured_speedup": 1.9, "measured_speedup_range": [1.8, 2.0],
              "training": {"loss": FEATURE_LOSS}}
    print_compress_report(console, CompressReport.from_json(report), out=None)
    text = console.export_text()
    assert "feature cosine to original" in text and "0.9731" in text
    assert "distilled on features" in text and "agreement" not in text
