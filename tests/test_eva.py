"""timm Eva models (EVA-02, DINOv3, the rope ViTs): ATME with RoPE at merged cell centres, CDCP, slimming."""
import copy

import pytest
import timm
import torch

import cait_cli
from cait_cli.method.atme import alternating_schedule, merge_tokens, unmerge
from cait_cli.method.cdcp import attach_gates, gates_of, set_budget
from cait_cli.method.model import patch_vit
from cait_cli.method.rope import GridRope
from cait_cli.method.slim import slim
from cait_cli.method.tokens import TokenState
from cait_cli.method.widths import block_widths
from cait_cli.models.checkpoint import save_checkpoint
from cait_cli.models.spec import CaitSpec

SMALL = dict(depth=3, embed_dim=64, num_heads=2, num_classes=5)
FAMILIES = {  # timm name -> tiny overrides (an 8x8 patch grid, one size off square below)
    "eva02_tiny_patch14_224": dict(img_size=112, **SMALL),  # SwiGLU (packed), rope 'cat' + ref grid, abs pos
    "vit_small_patch16_dinov3": dict(img_size=128, **SMALL),  # class + 4 registers, rope 'dinov3', half layout
    "vit_medium_patch16_rope_reg1_gap_256": dict(img_size=128, **SMALL),  # 1 register, GAP, LayerScale
    "vit_small_patch16_rope_224": dict(img_size=128, **SMALL),  # AttentionRope, 'xy' rope grid
}
MERGES = [0, 1]  # 8x8 -w-> 8x4 -h-> 4x4


def tiny_eva(name, **overrides):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**FAMILIES[name], **overrides}).eval()
    with torch.no_grad():  # timm's init gives near-uniform attention (positions barely matter) and heads near zero
        for name, param in model.named_parameters():
            if name.endswith(("qkv.weight", "q_proj.weight", "k_proj.weight", "head.weight")):
                param.normal_(0, 0.25)
            if name.endswith(("gamma_1", "gamma_2")):  # LayerScale starts at 1e-5: blocks would barely count
                param.fill_(1.0)
    return model


def images(model, batch=2, size=None):
    torch.manual_seed(1)
    return torch.randn(batch, 3, *(size or model.patch_embed.img_size))


def merged_gated(model, keep=0.5, multiple=2):
    """A copy with merges after MERGES and gates at `keep` of the gated MACs (scrambled scores)."""
    model = patch_vit(copy.deepcopy(model), alternating_schedule(MERGES, tuple(model.patch_embed.grid_size)))
    attach_gates(model, multiple)
    with torch.no_grad():
        for gate in gates_of(model).values():
            gate.scores.copy_(torch.rand_like(gate.scores))
    set_budget(model, keep)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_rope_table_on_the_full_grid_is_timms(name):
    model = tiny_eva(name)
    rope = GridRope(model.rope)
    grid = tuple(model.patch_embed.grid_size)
    want = model.rope.get_embed() if getattr(model.rope, "feat_shape", None) else model.rope.get_embed(shape=grid)
    torch.testing.assert_close(rope.table(rope.coords(grid)), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_patched_model_that_merges_nothing_is_the_original(name):
    model = tiny_eva(name)
    x = images(model)
    with torch.no_grad():
        patched = patch_vit(copy.deepcopy(model))
        torch.testing.assert_close(patched.forward_features(x), model.forward_features(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(patched(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("axes", [["w", "h"], ["w", "w", "h"]])
def test_merged_tokens_are_rotated_at_the_centres_of_their_cells(axes):
    rope = GridRope(tiny_eva("eva02_tiny_patch14_224").rope)
    grid = (6, 5)  # odd width: a column that pairs with nothing
    pos = rope.coords(grid)
    state = TokenState(x=torch.zeros(1, 30, 4), size=None, grid=grid, num_prefix=0, pos=pos)
    for axis in axes:
        state = merge_tokens(state, axis, torch.rand(1, state.grid[0] * state.grid[1]), torch.tensor(1.0))
    owner = unmerge(torch.arange(state.grid[0] * state.grid[1]).float().view(1, 1, *state.grid), grid, axes)
    owner = owner.flatten().long()  # merged token of each full-grid cell
    centres = torch.zeros(owner.max() + 1, 2).index_add_(0, owner, pos[0])
    centres /= torch.bincount(owner).unsqueeze(1)
    torch.testing.assert_close(state.pos[0], centres)
    first_cells = [0, 1, 5, 6] if axes == ["w", "h"] else [0, 1, 2, 3, 5, 6, 7, 8]  # the top-left token's cells
    torch.testing.assert_close(state.pos[0, 0], pos[0, first_cells].mean(dim=0))
    torch.testing.assert_close(rope.table(state.pos), rope.table(centres.unsqueeze(0)))


@pytest.mark.parametrize("name", FAMILIES)
def test_gated_and_slimmed_models_compute_the_same(name):
    model = merged_gated(tiny_eva(name))
    x = images(model, batch=3)
    with torch.no_grad():
        want = model(x)
        slim_model = slim(copy.deepcopy(model))
        got = slim_model(x)
    assert (got - want).abs().max() < 1e-4
    widths = block_widths(slim_model)
    assert any(w.qk < 32 for w in widths) and any(w.mlp < slim_model.blocks[0].mlp.fc2.out_features * 2
                                                  for w in widths)
    assert all(w.qk % 2 == 0 for w in widths)  # RoPE pairs kept whole


def test_rope_pairs_are_kept_together():
    model = merged_gated(tiny_eva("vit_small_patch16_dinov3"), keep=0.4)  # half layout: (i, i + 16)
    for block in model.blocks:
        kept = set(block.attn.gate_qk.kept_indices().tolist())
        assert kept == {(i + 16) % 32 for i in kept}
    model = merged_gated(tiny_eva("eva02_tiny_patch14_224"), keep=0.4)  # interleaved: (2i, 2i + 1)
    for block in model.blocks:
        kept = set(block.attn.gate_qk.kept_indices().tolist())
        assert kept == {i ^ 1 for i in kept}


@pytest.mark.parametrize("name,size", [("eva02_tiny_patch14_224", (98, 126)), ("vit_small_patch16_dinov3", (96, 128))])
def test_dense_api_returns_full_grid_maps_at_a_non_square_size(name, size):
    model = slim(merged_gated(tiny_eva(name)))
    x = images(model, size=size)  # EVA-02: 7x9 patches (odd); DINOv3: 6x8
    grid = model.patch_grid(x.shape[-2:])
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        merged = model.forward_intermediates(x, indices=[2], intermediates_only=True, merged_grids=True)
        logits = model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, *grid)] * 2
    assert tuple(merged[0].shape[-2:]) == model.merged_grid_sizes(grid)[2]
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_small_patch16_dinov3"])
def test_checkpoint_round_trip(tmp_path, name):
    model = slim(merged_gated(tiny_eva(name)))
    spec = CaitSpec.of(model, name, FAMILIES[name])
    path = save_checkpoint(model, tmp_path / "small.cait", spec, {"base_model": name})
    x = images(model)
    with torch.no_grad():
        want = model(x)
        loaded = cait_cli.load(str(path))
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=1e-5)
        via_timm = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
        torch.testing.assert_close(via_timm(x), want, rtol=0, atol=1e-5)
        features = timm.create_model(f"local-dir:{path}", pretrained=True, features_only=True, out_indices=(1, 2))
        maps = features.eval()(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8)] * 2  # the full patch grid, though tokens merged
    assert block_widths(loaded) == block_widths(model)


def test_refusals_name_what_is_missing():
    from cait_cli.errors import CaitError
    model = timm.create_model("vit_small_patch16_rope_mixed_224", pretrained=False, img_size=64, **SMALL)
    with pytest.raises(CaitError, match="mixed"):
        patch_vit(model)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=56, scale_mlp=True, **SMALL)
    with pytest.raises(CaitError, match="MLP"):
        patch_vit(model)



def test_onnx_export_matches_pytorch(tmp_path, name="vit_small_patch16_dinov3"):  # registers, half-layout RoPE
    pytest.importorskip("onnxruntime")
    from cait_cli.pipeline.export.onnx_export import export_checked, random_batches
    model = slim(merged_gated(tiny_eva(name, depth=2)))  # export time grows with depth
    input_size = (3, *model.patch_embed.img_size)
    exported, differences = export_checked(
        model, tmp_path / "small.onnx", example=torch.zeros(1, *input_size), dynamic_batch=False, opset=18, meta={},
        checks={"random": random_batches(input_size, 1, seed=0)}, tolerance=1e-4, overwrite=False)
    assert differences["random"] < 1e-4


def test_cost_model_reads_unpatched_and_patched_eva_alike():
    from cait_cli.method.cdcp import weight_norm_scores
    from cait_cli.method.cost import block_shapes
    model = tiny_eva("eva02_tiny_patch14_224")
    patched = patch_vit(copy.deepcopy(model))
    assert block_shapes(model) == block_shapes(patched)
    assert block_shapes(model)[0].mlp_matrices == 3  # SwiGLU: gate, value and output weights per hidden unit
    for raw, block in zip(model.blocks, patched.blocks):
        torch.testing.assert_close(weight_norm_scores(raw).qk, weight_norm_scores(block).qk)


def eva_table(model):
    """A synthetic latency table for the tiny EVA-02 (8x8 grid, class token, head width 32): tokens x width share."""
    from cait_cli.pipeline.planning.latency import LatencyTable
    tokens = [1 + 64 // 2 ** k for k in range(6, -1, -1)]
    hidden = model.blocks[0].mlp.fc2.in_features
    attn_widths, mlp_widths = [4, 8, 16, 24, 32], [hidden // 8, hidden // 4, hidden // 2, hidden]
    attn = [[n * w / 32 for w in attn_widths] for n in tokens]
    mlp = [[n * w / hidden for w in mlp_widths] for n in tokens]
    return LatencyTable("synthetic", tokens, attn_widths, mlp_widths, attn, mlp, [0.0] * len(tokens), fixed_ms=0.0)


def test_compress_end_to_end_on_a_tiny_eva(tmp_path, monkeypatch):  # CDCP calibration and fine-tuning run
    import json

    from safetensors.torch import save_file
    from support import make_image_folder

    from cait_cli.method.cost import model_macs
    from cait_cli.pipeline.compress import CompressConfig, compress
    name, args = "eva02_tiny_patch14_224", dict(FAMILIES["eva02_tiny_patch14_224"], num_classes=3)
    model = timm.create_model(name, pretrained=False, **args)
    base = tmp_path / "base"
    base.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(base / "model.safetensors"))
    (base / "config.json").write_text(json.dumps({
        "architecture": name, "num_classes": 3, "model_args": {k: v for k, v in args.items() if k != "num_classes"},
        "pretrained_cfg": {"input_size": [3, 112, 112], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}}))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=112)
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: eva_table(model))
    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup",  # MACs, not this machine's load
                        lambda base, slim_model, *a, **k: model_macs(base) / model_macs(slim_model))
    cfg = CompressConfig(model=str(base), target_speedup=1.5, out=tmp_path / "out.cait", data=str(data),
                         calib_steps=2, finetune_steps=2, batch_size=4, bench_batch_size=4, workers=0, device="cpu",
                         latency_cache=tmp_path / "cache")
    result = compress(cfg)
    loaded = cait_cli.load(str(tmp_path / "out.cait"))
    assert type(loaded).__name__ == "CaitEva" and loaded.cait_schedule == result.plan.schedule
    assert model_macs(model) / model_macs(loaded) > 1.4  # the plan reached for the target
    with torch.no_grad():
        assert loaded(images(loaded)).shape == (2, 3)


def test_rope_frequencies_stay_float32_when_the_model_is_cast():
    model = patch_vit(tiny_eva("vit_small_patch16_dinov3"))
    model.to(torch.bfloat16)
    assert model.cait_rope.frequencies.dtype == torch.float32
    assert all(block.rope is model.cait_rope for block in model.blocks)  # one table source, shared
    with torch.no_grad():
        assert model(images(model).bfloat16()).dtype == torch.bfloat16


def test_latency_table_times_eva_blocks_with_their_rope(tmp_path):
    from cait_cli.pipeline.planning.latency import calibrate_latency
    model = tiny_eva("eva02_tiny_patch14_224", depth=2)
    table = calibrate_latency(model, torch.device("cpu"), 2, cache_dir=tmp_path, repeats=1, multiple=1)
    assert all(w % 2 == 0 for w in table.attn_widths)  # RoPE pairs: attention widths are even
    assert table.mlp_widths[-1] == model.blocks[0].mlp.fc2.in_features  # SwiGLU hidden width, not the packed fc1
