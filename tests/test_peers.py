"""The comparison's peers: ToMe bipartite soft matching and torch-pruning channel pruning."""
import copy
import sys
from pathlib import Path

import pytest
import torch

from cait_cli.method.cost import model_macs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.peers.tome import apply_tome, bipartite_merge, tome_macs, token_counts  # noqa: E402


def test_bipartite_merge_averages_the_most_similar_pairs():
    # tokens 0..5: A = {0, 2, 4}, B = {1, 3, 5}; token 2 equals token 3, the others are orthogonal-ish
    x = torch.eye(6).unsqueeze(0)
    x[0, 2] = x[0, 3]
    size = torch.ones(1, 6, 1)
    merged, new_size = bipartite_merge(x, size, metric=x, r=1)
    assert merged.shape == (1, 5, 6) and new_size.shape == (1, 5, 1)
    assert new_size.sum() == 6 and new_size.max() == 2
    fused = merged[0, new_size[0, :, 0] == 2][0]
    assert torch.allclose(fused, x[0, 3])
    # size-weighted: a token standing for 3 patches pulls the average towards itself
    x2 = torch.tensor([[[1.0, 0.0], [0.9, 0.1]]])
    merged2, size2 = bipartite_merge(x2, torch.tensor([[[3.0], [1.0]]]), metric=x2, r=1)
    assert torch.allclose(merged2[0, 0], (3 * x2[0, 0] + x2[0, 1]) / 4) and size2[0, 0, 0] == 4


def test_tome_with_r_zero_is_the_original_and_merging_shrinks_tokens(make_vit):
    model = make_vit()
    images = torch.randn(3, 3, 32, 32)
    expected = model(images)
    assert torch.allclose(apply_tome(copy.deepcopy(model), 0)(images), expected, atol=1e-5)
    tome = apply_tome(copy.deepcopy(model), 4).eval()
    state = tome.forward_tokens(images)
    counts = token_counts(64, 1, [4] * len(model.blocks))
    assert state.x.shape[1] == counts[-1][1] == 1 + 64 - 4 * len(model.blocks)
    assert torch.equal(state.size[:, 1:].sum(dim=1).flatten(), torch.full((3,), 64.0))
    assert state.size[:, 0].eq(1).all()  # the class token never merges
    assert tome_macs(tome, 4) < model_macs(model)
    assert tome(images).shape == expected.shape


def test_torch_pruning_peer_slims_every_block(make_vit):
    from benchmarks.peers.channel_pruning import prune_channels

    model = make_vit()
    pruned = prune_channels(model, 0.5, (3, 32, 32))
    images = torch.randn(2, 3, 32, 32)
    assert pruned(images).shape == model(images).shape
    assert pruned.blocks[0].mlp.fc1.out_features == model.blocks[0].mlp.fc1.out_features // 2
    assert model_macs(pruned) < 0.5 * model_macs(model)
    assert all(b.attn.qkv.out_features == 3 * b.attn.num_heads * b.attn.head_dim for b in pruned.blocks)


@pytest.mark.parametrize("importance,global_ranking", [("taylor", False), ("l2", True), ("taylor", True)])
def test_torch_pruning_peer_settings_all_slim_to_a_working_vit(make_vit, importance, global_ranking):
    from benchmarks.peers.channel_pruning import PruneSetting, prune_channels

    model = make_vit()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    setting = PruneSetting(importance, global_ranking)
    pruned = prune_channels(model, 0.5, (3, 32, 32), setting, batches=[(images, labels)])
    assert pruned(images).shape == model(images).shape
    assert model_macs(pruned) < 0.75 * model_macs(model)
    assert all(p.grad is None for p in pruned.parameters()) and all(p.grad is None for p in model.parameters())
    assert all(b.attn.qkv.out_features == 3 * b.attn.num_heads * b.attn.head_dim for b in pruned.blocks)


def test_tome_merges_traced_back_to_the_grid(make_vit):
    from benchmarks.peers.tome import traced_intermediates

    model = make_vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.forward_intermediates(images, indices=[1, 3], norm=True, intermediates_only=True)
        same = traced_intermediates(apply_tome(copy.deepcopy(model), 0), images, [1, 3])
        assert all((a - b).abs().max() < 1e-5 for a, b in zip(plain, same))
        tome = apply_tome(copy.deepcopy(model), 6).eval()
        maps = traced_intermediates(tome, images, [3])
        state = tome.forward_tokens(images)
    tokens = tome.norm(state.x)[:, 1:]  # (B, N, C)
    cells = maps[0].flatten(2).transpose(1, 2)  # (B, 64, C)
    assert maps[0].shape == (2, model.embed_dim, 8, 8)
    for b in range(2):  # every cell holds one token's features, each token on as many cells as its size
        match = (cells[b, :, None] - tokens[b, None]).abs().amax(-1) < 1e-6  # (64, N)
        assert match.sum(1).eq(1).all()
        assert torch.equal(match.sum(0).float(), state.size[b, 1:, 0])
