"""The MAC counter follows the cost model of method.md."""
import timm

from cait_cli.method.atme import MergeStep
from cait_cli.method.cost import BlockShape, block_macs, model_macs
from cait_cli.method.model import patch_vit


def hand_block(n, c, h, d, hidden, n_out=None):
    n_out = n if n_out is None else n_out
    return 2 * n * c * h * d + n * c * h * d + 2 * n * n * h * d + n * h * d * c + 2 * n_out * c * hidden


def test_deit_small_is_4_6_gmacs():
    macs = model_macs(timm.create_model("deit_small_patch16_224", pretrained=False))
    assert abs(macs / 4.6e9 - 1) < 0.02
    hand = 12 * hand_block(197, 384, 6, 64, 1536) + 196 * 384 * 3 * 16 * 16 + 384 * 1000
    assert macs == hand


def test_merges_count_attention_on_tokens_in_and_mlp_on_tokens_out(make_vit):
    model = patch_vit(make_vit(), [MergeStep(1, "w")])
    n, n_half = 65, 33
    expected = (hand_block(n, 48, 3, 16, 192) + hand_block(n, 48, 3, 16, 192, n_out=n_half)
                + 2 * hand_block(n_half, 48, 3, 16, 192) + 64 * 48 * 3 * 16 + 48 * 7)
    assert model_macs(model) == expected
    assert block_macs(BlockShape(n, n_half, 48, 3, 16, 16, 192)) == hand_block(n, 48, 3, 16, 192, n_out=n_half)
