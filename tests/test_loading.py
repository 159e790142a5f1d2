"""Model loading: aliases, timm names, hf-hub ids through the real Hub code, local paths."""
import json

import pytest
import torch

from cait_cli.errors import CaitError
from cait_cli.models.loading import ALIASES, load_model

from support import run_python, safetensors_bytes, tiny_vit, write_hub_repo

TINY_ARGS = {"img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 3, "num_classes": 7}


def test_aliases_point_at_timm_deit_checkpoints():
    assert ALIASES["deit_small"] == "deit_small_patch16_224.fb_in1k"
    assert set(ALIASES) == {"deit_tiny", "deit_small", "deit_base"}


def test_random_weights_build_the_architecture_without_download():
    loaded = load_model("deit_tiny", weights="random")
    assert loaded.weights == "random" and loaded.architecture == "deit_tiny_patch16_224"
    assert loaded.model.patch_embed.grid_size == (14, 14) and not loaded.model.training


@pytest.mark.parametrize("name,message", [
    ("no_such_model", "unknown model 'no_such_model'"),
    ("resnet18", "not a timm VisionTransformer"),
    ("vit_small_patch16_rope_mixed_224", "mixed .*RoPE"),  # Eva with learned per-block RoPE: not yet
])
def test_bad_models_are_one_clear_error(name, message):  # (EVA-02, DINOv3 load: tests/test_eva.py)
    with pytest.raises(CaitError, match=message):
        load_model(name, weights="random")


def test_bad_weights_option():
    with pytest.raises(CaitError, match="--weights"):
        load_model("deit_tiny", weights="imagenet")


def test_local_directory_in_timm_layout(tmp_path):
    model = tiny_vit(depth=2)
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(model, tmp_path))
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 7,
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
              "model_args": {k: v for k, v in TINY_ARGS.items() if k != "num_classes"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    x = torch.randn(1, 3, 32, 32)
    for ref in (str(tmp_path), str(tmp_path / "model.safetensors")):
        loaded = load_model(ref)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.architecture == "vit_tiny_patch16_224" and loaded.model_args["depth"] == 2


def test_local_weights_without_config_explain_what_is_missing(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(safetensors_bytes(tiny_vit(depth=2), tmp_path))
    with pytest.raises(CaitError, match="no config.json"):
        load_model(str(tmp_path / "w.safetensors"))


def test_hub_loading_from_the_cache_offline(tmp_path):
    """The real timm/huggingface_hub path, HF_HUB_OFFLINE=1, a cache laid out by the test."""
    cache = tmp_path / "hf"
    deit = tiny_vit("deit_tiny_patch16_224", embed_dim=192, num_heads=3, depth=12, img_size=224,
                    patch_size=16, num_classes=1000)
    write_hub_repo(cache, "timm/deit_tiny_patch16_224.fb_in1k",
                   {"model.safetensors": safetensors_bytes(deit, tmp_path)})
    small = tiny_vit(depth=2)
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 7,
              "pretrained_cfg": {"input_size": [3, 32, 32]},
              "model_args": {k: v for k, v in TINY_ARGS.items() if k != "num_classes"}}
    write_hub_repo(cache, "someone/tiny-vit", {"model.safetensors": safetensors_bytes(small, tmp_path),
                                               "config.json": json.dumps(config).encode()})
    x = torch.randn(1, 3, 224, 224)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(deit(x), tmp_path / "deit.pt")
        torch.save(small(x[:, :, :32, :32]), tmp_path / "small.pt")
    code = f"""
import torch, cait_cli
from cait_cli.models.loading import load_model
x = torch.load({str(tmp_path / 'x.pt')!r})
deit = load_model('deit_tiny').model
small = load_model('hf-hub:someone/tiny-vit').model
with torch.no_grad():
    print(float((deit(x) - torch.load({str(tmp_path / 'deit.pt')!r})).abs().max()))
    print(float((small(x[:, :, :32, :32]) - torch.load({str(tmp_path / 'small.pt')!r})).abs().max()))
for missing in ['deit_small', 'hf-hub:someone/missing']:
    try:
        load_model(missing)
    except cait_cli.CaitError as err:
        print('ERR', err)
"""
    result = run_python(code, env={"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert float(lines[0]) < 1e-5 and float(lines[1]) < 1e-5
    assert "timm/deit_small_patch16_224.fb_in1k" in lines[2] and "offline" in lines[2]
    assert "someone/missing" in lines[3] and "local directory" in lines[3]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_prefix_token_variants_load(name):
    loaded = load_model(name, weights="random")
    assert loaded.model.num_prefix_tokens in (2, 5)
