"""CDCP: consistent gates, hard top-k with straight-through revival, global budgets."""
import torch

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, full_gated_macs, gated_macs, gates_of, set_budget
from cait_cli.method.gates import ChannelGate, allocate_keep
from cait_cli.method.model import patch_vit


def test_gate_is_hard_top_k_in_value():
    gate = ChannelGate(6, torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2]))
    gate.set_keep(3)
    assert gate().tolist() == [0, 1, 1, 0, 1, 0]
    assert gate.kept_indices().tolist() == [1, 2, 4]


def test_pruned_channel_gets_gradient_and_can_revive():
    gate = ChannelGate(4, torch.tensor([1.0, 0.9, 0.1, 0.8]))
    gate.set_keep(2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])  # channel 2 is the useful one, pruned at first
    opt = torch.optim.SGD(gate.parameters(), lr=0.5)
    assert 2 not in gate.kept_indices().tolist()
    for _ in range(5):
        opt.zero_grad()
        pruned = 2 not in gate.kept_indices().tolist()
        ((gate() - target) ** 2).sum().backward()
        if pruned:
            assert gate.scores.grad[2] < 0  # the pruned channel is still pushed up
        opt.step()
    assert 2 in gate.kept_indices().tolist()


def test_masks_are_shared_by_heads_and_by_query_and_key(make_vit, monkeypatch):
    model = patch_vit(make_vit())
    for gate in attach_gates(model).values():
        gate.set_keep(gate.channels // 2)
    attn = model.blocks[0].attn
    x = torch.randn(1, 65, 48)
    captured = {}

    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        captured.update(q=q, k=k, v=v)
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        attn(x, None, need_importance=False)
    q, k, v = captured["q"], captured["k"], captured["v"]  # (B, h, N, d)
    zero_q = (q.abs().sum(dim=(0, 2)) == 0)  # (h, d)
    zero_k = (k.abs().sum(dim=(0, 2)) == 0)
    zero_v = (v.abs().sum(dim=(0, 2)) == 0)
    assert torch.equal(zero_q, zero_k)
    assert all(torch.equal(zero_q[0], zero_q[h]) for h in range(3))
    assert all(torch.equal(zero_v[0], zero_v[h]) for h in range(3))
    assert zero_q[0].sum() == 8 and zero_v[0].sum() == 8  # 16 per head, half kept


def test_weight_norm_init_ranks_strong_channels_first(make_vit):
    model = patch_vit(make_vit())
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[5] *= 100
        model.blocks[0].mlp.fc1.weight[7] *= 0
    gates = attach_gates(model)
    scores = gates["blocks.0.mlp"].scores
    assert scores.argmax() == 5 and scores.argmin() == 7


def test_global_budget_is_met_and_follows_scores():
    scores = [torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 1.0])]
    keeps = allocate_keep(scores, channel_costs=[1.0, 1.0], budget=5.0, min_fraction=0.25)
    assert sum(keeps) == 5 and keeps[0] >= 2
    assert allocate_keep(scores, [1.0, 1.0], budget=0.0, min_fraction=0.25) == [1, 1]


def test_budgets_are_spent_in_groups_of_the_channel_multiple():
    scores = [torch.arange(32.0, 0, -1), torch.ones(20)]  # the second gate is no multiple of 8
    keeps = allocate_keep(scores, channel_costs=[1.0, 1.0], budget=30.0, min_fraction=0.125, multiple=8)
    assert keeps[0] % 8 == 0 and keeps[1] in (8, 16, 20) and sum(keeps) <= 30
    assert allocate_keep(scores, [1.0, 1.0], budget=1e9, multiple=8) == [32, 20]  # full width is allowed
    assert allocate_keep(scores, [1.0, 1.0], budget=0.0, multiple=8) == [8, 8]  # at least one group


def test_set_budget_spends_the_fraction_of_gated_macs(make_vit):
    model = patch_vit(make_vit(), alternating_schedule([1], (8, 8)))
    gates = attach_gates(model)
    assert len(gates) == 12 and set(gates) >= {"blocks.0.qk", "blocks.0.v", "blocks.0.mlp"}
    set_budget(model, 0.5)
    fraction = gated_macs(model) / full_gated_macs(model)
    assert 0.45 < fraction <= 0.5
    assert all(g.keep >= max(1, g.channels // 8) for g in gates_of(model).values())


def test_query_key_and_value_keep_the_same_width_per_block(make_vit):
    model = patch_vit(make_vit())
    gates = attach_gates(model)
    with torch.no_grad():
        for gate in gates.values():
            gate.scores.copy_(torch.rand_like(gate.scores))
    set_budget(model, 0.4)
    for i in range(4):
        assert gates[f"blocks.{i}.qk"].keep == gates[f"blocks.{i}.v"].keep
