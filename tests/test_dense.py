"""Dense transfer: timm's forward_intermediates / features_only API on CAIT models, at any size."""
import json

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, set_budget
from cait_cli.method.model import patch_vit
from cait_cli.method.slim import slim
from cait_cli.models.checkpoint import save_checkpoint
from cait_cli.models.loading import _serialisable_args
from cait_cli.models.spec import CaitSpec

from support import TINY, run_python, tiny_vit, write_hub_repo

NAMES = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]
MERGES = [1, 2]  # blocks that merge in the tiny 4-block models: 8x8 -> 8x4 -> 4x4


def merging_vit(name="vit_tiny_patch16_224"):
    model = tiny_vit(name)
    return patch_vit(model, alternating_schedule(MERGES, (8, 8)))


def repeat_cells(merged, grid, axes):
    """What unmerge must give, written independently: repeat every merged cell, crop to grid."""
    rows = 2 ** sum(axis == "h" for axis in axes)
    cols = 2 ** sum(axis == "w" for axis in axes)
    full = merged.repeat_interleave(rows, dim=-2).repeat_interleave(cols, dim=-1)
    return full[..., : grid[0], : grid[1]]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_less_model_gives_timms_intermediates(name):
    ref, model = tiny_vit(name), patch_vit(tiny_vit(name))
    x = torch.randn(2, 3, 32, 32)
    calls = [dict(), dict(indices=2, norm=True), dict(indices=[0, -1], return_prefix_tokens=True),
             dict(indices=[1, 3], output_fmt="NLC", intermediates_only=True),
             dict(indices=[2], stop_early=True, intermediates_only=True)]
    with torch.no_grad():
        for kwargs in calls:
            expected = ref.forward_intermediates(x, **kwargs)
            got = model.forward_intermediates(x, **kwargs)
            for e, g in zip(_flat(expected), _flat(got)):
                assert e.shape == g.shape and (e - g).abs().max() < 1e-5, kwargs
        as_dict = model.forward_intermediates(x, indices=[3], output_dict=True, return_prefix_tokens=True)
        expected = ref.forward_intermediates(x, indices=[3], output_dict=True, return_prefix_tokens=True)
        assert as_dict.keys() == expected.keys()
        for key in expected:
            for e, g in zip(_flat(expected[key]), _flat(as_dict[key])):
                assert (e - g).abs().max() < 1e-5
        layers = model.get_intermediate_layers(x, n=2, reshape=True, norm=True)
        for e, g in zip(ref.get_intermediate_layers(x, n=2, reshape=True, norm=True), layers):
            assert (e - g).abs().max() < 1e-5


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


@pytest.mark.parametrize("name", NAMES)
def test_merging_model_unmerges_intermediates_exactly(name):
    model = merging_vit(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, full = model.forward_intermediates(x, norm=True)
        merged = model.forward_intermediates(x, norm=True, merged_grids=True, intermediates_only=True)
        full_nlc = model.forward_intermediates(x, output_fmt="NLC", norm=True, intermediates_only=True)
        grid_features = model.forward_grid(x)
    assert [tuple(m.shape[-2:]) for m in merged] == [(8, 8), (8, 4), (4, 4), (4, 4)]
    assert model.merged_grid_sizes((8, 8)) == [(8, 8), (8, 4), (4, 4), (4, 4)]
    for i, (f, m, nlc) in enumerate(zip(full, merged, full_nlc)):
        assert f.shape == (2, model.embed_dim, 8, 8)
        assert torch.equal(f, repeat_cells(m, (8, 8), model.merge_axes_through(i)))
        assert torch.equal(nlc, f.flatten(2).transpose(1, 2))
    assert torch.equal(merged[-1], grid_features)
    assert torch.equal(full[-1], model.unmerge(grid_features))
    assert final.shape == (2, model.num_prefix_tokens + 16, model.embed_dim)


@pytest.mark.parametrize("size", [(36, 52), (44, 44), (24, 60)])
def test_any_image_size_runs_and_unmerges(size):
    model = merging_vit("deit_tiny_distilled_patch16_224")
    x = torch.randn(1, 3, *size)
    grid = model.patch_grid(size)
    assert grid == (size[0] // 4, size[1] // 4)
    with torch.no_grad():
        logits = model(x)
        full = model.forward_intermediates(x, intermediates_only=True)
        merged = model.forward_intermediates(x, intermediates_only=True, merged_grids=True)
        dense = model.unmerge(model.forward_grid(x), grid)
    assert logits.shape == (1, TINY["num_classes"])
    assert all(f.shape == (1, model.embed_dim, *grid) for f in full)
    assert [tuple(m.shape[-2:]) for m in merged] == model.merged_grid_sizes(grid)
    for i, (f, m) in enumerate(zip(full, merged)):
        assert torch.equal(f, repeat_cells(m, grid, model.merge_axes_through(i)))
    assert dense.shape == (1, model.embed_dim, *grid)


def test_other_sizes_resample_position_embeddings_as_timm_does():
    ref = tiny_vit(dynamic_img_size=True)
    model = patch_vit(tiny_vit())
    x = torch.randn(2, 3, 28, 44)  # 7 x 11 grid
    with torch.no_grad():
        expected = ref.forward_intermediates(x, indices=[1, 3])
        got = model.forward_intermediates(x, indices=[1, 3])
        assert (ref(x) - model(x)).abs().max() < 1e-5
    for e, g in zip(_flat(expected), _flat(got)):
        assert e.shape == g.shape and (e - g).abs().max() < 1e-5


def test_pruning_keeps_the_merge_schedule_in_step():
    model = merging_vit()
    kept = model.prune_intermediate_layers([0, -3])
    assert kept == [0, 1] and len(model.blocks) == 2
    assert [s.block for s in model.cait_schedule] == [1]
    with torch.no_grad():
        features = model.forward_grid(torch.randn(1, 3, 32, 32))
    assert features.shape[-2:] == (8, 4) and model.unmerge(features).shape[-2:] == (8, 8)


def test_unsupported_arguments_are_refused():
    model = merging_vit()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(NotImplementedError):
        model.forward_intermediates(x, attn_mask=torch.zeros(1, 1, 65, 65))


def slim_checkpoint(tmp_path, name="deit_tiny_distilled_patch16_224"):
    model = tiny_vit(name)
    base_args = _serialisable_args(model)
    patch_vit(model, alternating_schedule(MERGES, (8, 8)))
    attach_gates(model)
    set_budget(model, 0.5)
    slim(model)
    path = tmp_path / "model.cait"
    save_checkpoint(model, path, CaitSpec.of(model, name, base_args), {"base_model": f"timm/{name}"})
    return model.eval(), path


def test_features_only_through_timm_create_model(tmp_path):
    model, path = slim_checkpoint(tmp_path)
    features = timm.create_model(f"local-dir:{path}", pretrained=True, features_only=True,
                                 out_indices=(1, 3)).eval()
    assert isinstance(features, FeatureGetterNet)
    assert features.feature_info.channels() == [model.embed_dim] * 2
    assert features.feature_info.reduction() == [4, 4]
    for size in [(32, 32), (40, 56)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            got = features(x)
            expected = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        assert [tuple(t.shape) for t in got] == [(2, model.embed_dim, size[0] // 4, size[1] // 4)] * 2
        for e, g in zip(expected, got):
            assert (e - g).abs().max() < 1e-5


def test_features_only_from_the_hub_cache_offline(tmp_path):
    model, path = slim_checkpoint(tmp_path)
    cache = tmp_path / "hf"
    write_hub_repo(cache, "me/tiny-cait", {f.name: f.read_bytes() for f in path.iterdir()})
    x = torch.randn(1, 3, 36, 44)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model.forward_intermediates(x, indices=2, intermediates_only=True), tmp_path / "y.pt")
    code = f"""
import timm, torch, cait_cli
x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})
net = timm.create_model('hf-hub:me/tiny-cait', pretrained=True, features_only=True, out_indices=2).eval()
with torch.no_grad():
    out = net(x)
print(len(out), max(float((a - b).abs().max()) for a, b in zip(out, y)))
"""
    result = run_python(code, env={"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    count, err = result.stdout.split()
    assert count == "2" and float(err) < 1e-5
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "cait_vit" and config["pretrained_cfg"]["fixed_input_size"] is False


def test_img_size_at_creation_resamples_as_running_at_that_size(tmp_path):
    model, path = slim_checkpoint(tmp_path)
    resized = timm.create_model(f"local-dir:{path}", pretrained=True, img_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (resized(x) - model(x)).abs().max() < 1e-5
