"""Physical slimming computes what the gated, merging model computes."""
import copy

import pytest
import torch

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, gates_of, set_budget
from cait_cli.method.cost import model_macs
from cait_cli.method.model import patch_vit
from cait_cli.method.slim import slim
from cait_cli.method.widths import block_widths


def gated(model, keep=0.5, blocks=(1, 2), multiple=1):
    patch_vit(model, alternating_schedule(blocks, tuple(model.patch_embed.grid_size)))
    attach_gates(model, multiple)
    with torch.no_grad():  # scramble scores so kept channels are not a prefix
        for gate in gates_of(model).values():
            gate.scores.copy_(torch.rand_like(gate.scores))
    set_budget(model, keep)
    return model


def slimmed_exactly(model):
    """The slim copy of a gated model, checked to compute what the gated model computes."""
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        slim_model = slim(copy.deepcopy(model))
        out = slim_model(x)
    assert (out - reference).abs().max() < 1e-4
    return slim_model


def test_widths_in_a_channel_multiple_slim_exactly(make_vit):
    model = gated(make_vit(embed_dim=96, num_heads=3), keep=0.45, multiple=8)  # head width 32, MLP 384
    slim_model = slimmed_exactly(model)
    widths = block_widths(slim_model)
    assert all(w.qk % 8 == 0 and w.v % 8 == 0 and w.mlp % 8 == 0 for w in widths)
    assert any(w.qk < 32 for w in widths) and any(w.mlp < 384 for w in widths)  # something was pruned
    for block, w in zip(slim_model.blocks, widths):  # the exported Linear layers have those widths
        heads = block.attn.num_heads
        assert block.attn.qkv.out_features == heads * (2 * w.qk + w.v) and block.mlp.fc1.out_features == w.mlp


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "vit_small_patch14_reg4_dinov2"])
def test_slim_matches_gated_model_on_tiny_vits(make_vit, name):
    model = gated(make_vit(name))
    slim_model = slimmed_exactly(model)
    assert not gates_of(slim_model)
    widths = block_widths(slim_model)
    gates = gates_of(model)
    assert widths[0].mlp == gates["blocks.0.mlp"].keep and widths[0].qk == gates["blocks.0.qk"].keep
    heads = slim_model.blocks[0].attn.num_heads
    assert slim_model.blocks[0].attn.qkv.out_features == heads * (2 * widths[0].qk + widths[0].v)


def test_slim_matches_gated_model_on_deit_small(make_vit):
    torch.manual_seed(0)
    import timm
    model = gated(timm.create_model("deit_small_patch16_224", pretrained=False).eval(), keep=0.6, blocks=(3, 6))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = model(x)
        out = slim(model)(x)
    assert (out - reference).abs().max() < 1e-4


def test_slimming_reduces_macs_and_parameters(make_vit):
    model = gated(make_vit())
    before = sum(p.numel() for n, p in model.named_parameters() if "gate" not in n)
    macs_before = model_macs(model)
    slim(model)
    assert sum(p.numel() for p in model.parameters()) < before
    assert model_macs(model) < 0.7 * macs_before
