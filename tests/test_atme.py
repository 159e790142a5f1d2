"""ATME: neighbour merging keeps a regular grid, fuses asymmetrically, and unmerges."""
import copy

import pytest
import torch

from cait_cli.method.atme import (MergeStep, TokenMerge, alternating_schedule, grid_after,
                                  merge_tokens, unmerge)
from cait_cli.method.base import token_counts
from cait_cli.method.model import patch_vit
from cait_cli.method.tokens import TokenState


def grid_state(h, w, c=4, prefix=1, batch=2):
    x = torch.randn(batch, prefix + h * w, c)
    return TokenState(x=x, size=None, grid=(h, w), num_prefix=prefix)


def test_alternating_schedule_halves_longer_axis_w_first():
    steps = alternating_schedule([3, 6], (14, 14))
    assert steps == [MergeStep(3, "w"), MergeStep(6, "h")]
    assert grid_after((14, 14), ["w"]) == (14, 7)
    assert grid_after((14, 14), ["w", "h"]) == (7, 7)
    assert grid_after((7, 7), ["w", "h"]) == (4, 4)  # odd axes keep their last line


@pytest.mark.parametrize("axis", ["w", "h"])
def test_equal_pairs_average_neighbours_and_keep_prefix(axis):
    state = grid_state(4, 6)
    importance = torch.ones(2, 24)
    out = merge_tokens(state, axis, importance, alpha=torch.tensor(1.0))
    grid = state.x[:, 1:].reshape(2, 4, 6, 4)
    if axis == "w":
        expected = (grid[:, :, 0::2] + grid[:, :, 1::2]) / 2
    else:
        expected = (grid[:, 0::2] + grid[:, 1::2]) / 2
    assert out.grid == ((4, 3) if axis == "w" else (2, 6))
    torch.testing.assert_close(out.x[:, 1:], expected.flatten(1, 2))
    torch.testing.assert_close(out.x[:, :1], state.x[:, :1])
    assert torch.all(out.size[:, 1:] == 2) and out.size[0, 0, 0] == 1


def test_odd_axis_keeps_last_column_unmerged():
    state = grid_state(2, 5)
    out = merge_tokens(state, "w", torch.ones(2, 10), torch.tensor(0.0))
    grid = state.x[:, 1:].reshape(2, 2, 5, 4)
    assert out.grid == (2, 3)
    merged = out.x[:, 1:].reshape(2, 2, 3, 4)
    torch.testing.assert_close(merged[:, :, 2], grid[:, :, 4])
    assert out.size[0, 1:, 0].tolist() == [2, 2, 1, 2, 2, 1]


def test_fusion_is_weighted_by_importance_and_size():
    state = grid_state(1, 2, prefix=1, batch=1)
    xa, xb = state.x[0, 1], state.x[0, 2]
    importance = torch.tensor([[3.0, 1.0]])  # normalised to [1.5, 0.5]
    out = merge_tokens(state, "w", importance, torch.tensor(2.0))
    w_a = torch.sigmoid(torch.tensor(2.0 * (1.5 - 0.5)))
    torch.testing.assert_close(out.x[0, 1], w_a * xa + (1 - w_a) * xb)
    # with no importance weight, a token standing for 3 patches outweighs one of 1
    sized = TokenState(state.x, torch.tensor([[[1.0], [3.0], [1.0]]]), (1, 2), 1)
    out = merge_tokens(sized, "w", importance, torch.tensor(0.0))
    torch.testing.assert_close(out.x[0, 1], 0.75 * xa + 0.25 * xb)
    assert out.size[0, 1, 0] == 4


def test_two_steps_in_one_block():
    merge = TokenMerge(["w", "h"])
    out = merge(grid_state(6, 6), torch.rand(2, 36))
    assert out.grid == (3, 3) and out.x.shape == (2, 10, 4)
    assert torch.all(out.size[:, 1:] == 4)


def test_unmerge_copies_tokens_back_to_their_cells():
    feats = torch.arange(2 * 3 * 4.0).reshape(1, 2, 3, 4)  # (B, C, H', W') from a (5, 7) grid
    full = unmerge(feats, (5, 7), ["w", "h"])
    assert full.shape == (1, 2, 5, 7)
    for i in range(5):
        for j in range(7):
            assert torch.equal(full[0, :, i, j], feats[0, :, i // 2, j // 2])
    with pytest.raises(ValueError):
        unmerge(feats, (8, 8), ["w"])


def test_patched_model_without_merges_matches_timm(make_vit):
    for name in ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2"]:
        model = make_vit(name)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            reference = model(x)
            patched = patch_vit(copy.deepcopy(model))(x)
        torch.testing.assert_close(patched, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2),
                                         ("vit_small_patch14_reg4_dinov2", 5)])
def test_merging_model_exposes_grid_and_unmerges(make_vit, name, prefix):
    model = patch_vit(make_vit(name), [MergeStep(0, "w"), MergeStep(2, "h"), MergeStep(2, "w")])
    assert token_counts(model) == [(prefix + 64, prefix + 32), (prefix + 32, prefix + 32),
                                   (prefix + 32, prefix + 8), (prefix + 8, prefix + 8)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x), model.forward_grid(x)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, model.embed_dim, 4, 2)  # 8x8 -w-> 8x4 -h-> 4x4 -w-> 4x2
    assert model.unmerge(feats).shape == (2, model.embed_dim, 8, 8)


@pytest.mark.parametrize("importance", ["cls", "received"])
def test_proportional_attention_counts_a_merged_token_as_its_copies(make_vit, importance):
    """A token of size 2 must attract the attention that two identical tokens would (and, as one
    of the queries the "received" signal averages, count twice)."""
    attn = patch_vit(make_vit(), importance=importance).blocks[0].attn
    x = torch.randn(1, 4, 48)
    duplicated = torch.cat([x, x[:, 3:]], dim=1)  # last token twice, all of size 1
    sizes = torch.tensor([1.0, 1.0, 1.0, 2.0]).view(1, 1, 1, 4)
    with torch.no_grad():
        out_dup, imp_dup = attn(duplicated, None, need_importance=True)
        out_merged, imp_merged = attn(x, sizes.log(), need_importance=True)
    torch.testing.assert_close(out_merged[:, :3], out_dup[:, :3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp_merged[:, 3], imp_dup[:, 3] + imp_dup[:, 4], rtol=1e-5, atol=1e-6)


def test_merge_gradient_reaches_importance_weight(make_vit):
    model = patch_vit(make_vit(), [MergeStep(1, "w")])
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.blocks[1].merge.alpha.grad is not None
    assert model.blocks[1].merge.alpha.grad.abs().sum() > 0
