"""`cait push` against a local stand-in for the Hub, with the real huggingface_hub client."""
import json
import socket

import pytest
import torch

from cait_cli.errors import CaitError
from cait_cli.interface.card import model_card
from cait_cli.interface.hub import push
from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates, set_budget
from cait_cli.method.model import patch_vit
from cait_cli.method.slim import slim
from cait_cli.models.checkpoint import save_checkpoint
from cait_cli.models.loading import _serialisable_args
from cait_cli.models.spec import CaitSpec
from cait_cli.pipeline.reports.compress import CompressReport

from fake_hub import RunningHub
from support import run_python, tiny_vit

REPORT = {"target_speedup": 1.9, "measured_speedup": 1.93, "device": "AMD EPYC", "batch_size": 64,
          "baseline": {"params": 5_700_000, "macs": 1_250_000_000, "throughput": 100.0, "top1": 0.72},
          "compressed": {"params": 4_100_000, "macs": 640_000_000, "throughput": 193.0, "top1": 0.718,
                         "agreement": 0.95}}


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_vit()
    args = _serialisable_args(model)
    model.pretrained_cfg = {**model.pretrained_cfg, "license": "apache-2.0"}
    patch_vit(model, alternating_schedule([1], (8, 8)))
    attach_gates(model)
    set_budget(model, 0.5)
    slim(model)
    path = save_checkpoint(model, tmp_path / "ckpt", CaitSpec.of(model, "vit_tiny_patch16_224", args),
                           {"base_model": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"})
    (path / "report.json").write_text(json.dumps(REPORT))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    return path


@pytest.fixture
def hub():
    with RunningHub() as running:
        yield running


def test_model_card_metadata_table_and_usage(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    card = model_card(config, CompressReport.from_json(REPORT), "me/tiny-cait")
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: apache-2.0" in front
    assert "base_model: timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in front and "- cait" in front
    assert "| throughput (img/s) | 100.0 | 193.0 |" in card and "| top-1 | 72.00% | 71.80% |" in card
    assert "measured 1.93x" in card and 'timm.create_model("hf-hub:me/tiny-cait", pretrained=True)' in card
    assert "pip install cait-cli" in card
    assert f"made with [cait](https://pypi.org/project/cait-cli/) {config['cait']['cait_cli_version']}:" in card
    config["pretrained_cfg"].pop("license")
    assert "license:" not in model_card(config, None, "me/x")


def test_push_uploads_checkpoint_and_card(checkpoint, hub):
    result = push(checkpoint, "me/tiny-cait", token="hf_test", endpoint=hub.url, private=True)
    files = hub.files("me/tiny-cait")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "report.json"] == result.files
    assert files["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
    assert hub.private["me/tiny-cait"] and result.url.endswith("/commit/" + "c0ffee" * 6 + "c0ff")
    assert all(r.headers.get("authorization") == "Bearer hf_test" or r.headers.get("Authorization")
               == "Bearer hf_test" for r in hub.requests)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors", "report.json"]


def test_push_to_a_new_branch(checkpoint, hub):
    push(checkpoint, "me/tiny-cait", token="t", endpoint=hub.url, revision="v1")
    assert "README.md" in hub.files("me/tiny-cait", "v1") and not hub.files("me/tiny-cait", "main")
    assert any(r.path.endswith("/branch/v1") for r in hub.requests)


def test_dry_run_writes_preview_and_sends_nothing(checkpoint, hub, tmp_path):
    result = push(checkpoint, "me/tiny-cait", dry_run=True, dry_run_out=tmp_path / "preview", endpoint=hub.url)
    assert hub.requests == [] and result.dry_run
    assert sorted(p.name for p in (tmp_path / "preview").iterdir()) == result.files
    assert "# tiny-cait" in (tmp_path / "preview" / "README.md").read_text()


@pytest.mark.parametrize("status,message", [(401, "invalid or expired"), (403, "may not write"),
                                            (404, "not found"), (500, "answered 500")])
def test_hub_errors_become_one_line(checkpoint, hub, status, message):
    hub.fail_with = (status, "nope")
    with pytest.raises(CaitError, match=message) as err:
        push(checkpoint, "me/tiny-cait", token="t", endpoint=hub.url)
    assert "\n" not in str(err.value)


def test_unreachable_hub(checkpoint):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaitError, match="cannot reach the Hub"):
        push(checkpoint, "me/tiny-cait", token="t", endpoint=f"http://127.0.0.1:{port}")


def test_refusals(checkpoint, tmp_path, monkeypatch):
    import huggingface_hub

    with pytest.raises(CaitError, match="not a directory holding a compressed checkpoint"):
        push(tmp_path / "nothing", "me/x", token="t")
    with pytest.raises(CaitError, match="not a Hub repository id"):
        push(checkpoint, "no slash", token="t")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CaitError, match="no Hugging Face token"):
        push(checkpoint, "me/x")


@pytest.mark.parametrize("text", ["{not json", json.dumps({"target_speedup": 1.9})])
def test_a_report_json_cait_did_not_write_is_one_line(checkpoint, tmp_path, text):
    (checkpoint / "report.json").write_text(text)
    with pytest.raises(CaitError, match="is not a report cait compress wrote") as err:
        push(checkpoint, "me/x", dry_run=True, dry_run_out=tmp_path / "preview")
    assert "\n" not in str(err.value) and not (tmp_path / "preview").exists()


def test_round_trip_push_then_load_from_the_hub_in_a_fresh_process(checkpoint, hub, tmp_path):
    """The CLI pushes with HF_ENDPOINT and HF_TOKEN from the environment; a new process downloads."""
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_env", "HF_HOME": str(tmp_path / "hf")}
    code = f"import sys; from cait_cli.interface.cli import main; sys.argv = ['cait', 'push', " \
           f"{str(checkpoint)!r}, 'me/round-trip']; main()"
    pushed = run_python(code, env)
    assert pushed.returncode == 0, pushed.stderr
    assert "uploaded to me/round-trip" in pushed.stdout
    load = f"""
import torch, timm, cait_cli
io = torch.load({str(tmp_path / 'io.pt')!r})
a = timm.create_model('hf-hub:me/round-trip', pretrained=True).eval()
b = cait_cli.load('hf-hub:me/round-trip')
with torch.no_grad():
    print(float((a(io['x']) - io['y']).abs().max()), float((b(io['x']) - io['y']).abs().max()))
"""
    loaded = run_python(load, env)
    assert loaded.returncode == 0, loaded.stderr
    assert all(float(v) < 1e-6 for v in loaded.stdout.split())
    assert any(r.method == "GET" and r.path.endswith("/resolve/main/model.safetensors") for r in hub.requests)
