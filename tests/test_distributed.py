"""Data-parallel compress under torchrun, on the CPU with gloo: real launches of two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ideal_latency import write_ideal_tables
from support import make_image_folder, save_tiny_timm_dir, tiny_vit

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def launch(args, processes: int, env=None, timeout: int = 180) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node N ARGS`, or ARGS alone for one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "HF_HUB_OFFLINE": "1", **(env or {})}
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (runner if processes > 1 else [sys.executable]) + list(map(str, args))
    if processes == 1:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun sets it: the same thread count, the same latency table
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = tiny_vit(**ARGS)
    return {"model": str(save_tiny_timm_dir(root / "tiny", model, ARGS)),
            "data": str(make_image_folder(root / "data", classes=3, per_class=8)),
            "cache": str(write_ideal_tables(root / "latency", model, 16)), "root": root}


def run_worker(assets, name: str, processes: int, batch: int, **extra):
    log = assets["root"] / f"log-{name}"
    log.mkdir(exist_ok=True)
    opts = dict(model=assets["model"], target_speedup=1.15, out=str(assets["root"] / f"{name}.cait"),
                data=assets["data"], calib_steps=6, finetune_steps=6, batch_size=batch, bench_batch_size=16,
                workers=1, device="cpu", checkpoint_every=2, latency_cache=assets["cache"], replan=False,
                method="cdcp", log=str(log), **extra)
    done = launch([TESTS / "dist_worker.py", json.dumps(opts)], processes)
    return done, log


@pytest.fixture(scope="module")
def runs(assets):
    one, _ = run_worker(assets, "one", 1, batch=8)
    assert one.returncode == 0, one.stderr[-3000:]
    two, log = run_worker(assets, "two", 2, batch=4)
    assert two.returncode == 0, two.stderr[-3000:]
    return {"one": assets["root"] / "one.cait", "two": assets["root"] / "two.cait", "log": log}


def test_two_processes_give_the_widths_and_weights_of_one_with_the_same_global_batch(runs):
    config = [json.loads((runs[k] / "config.json").read_text()) for k in ("one", "two")]
    for c in config:
        c["cait"].pop("measured_speedup")  # timed on a busy machine
    assert config[0] == config[1]  # the same slimmed widths and merges
    a, b = load_file(str(runs["one"] / "model.safetensors")), load_file(str(runs["two"] / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
    report = json.loads((runs["two"] / "report.json").read_text())
    assert report["training"]["processes"] == 2 and report["training"]["global_batch"] == 8
    assert report["plan"]["keep"] < 1.0  # CDCP pruned: calibration ran on both ranks


def test_only_rank_0_writes_and_every_rank_ends_with_the_same_plan(runs):
    assert sorted(p.name for p in runs["log"].glob("rank*.txt")) == ["rank0.txt"]
    assert "checkpoint" in (runs["log"] / "rank0.txt").read_text()
    plans = [json.loads((runs["log"] / f"result{r}.json").read_text()) for r in (0, 1)]
    assert plans[0] == plans[1]


def test_a_run_interrupted_under_torchrun_resumes_to_the_same_result(assets, runs):
    stopped, log = run_worker(assets, "cut", 2, batch=4, stop_at=["finetune", 3])
    assert stopped.returncode != 0 and not (assets["root"] / "cut.cait").exists()
    assert (assets["root"] / ".cut.cait.cait-run" / "state.pt").is_file()
    assert sorted(p.name for p in log.glob("rank*.txt")) == ["rank0.txt"]
    resumed, _ = run_worker(assets, "cut", 2, batch=4, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(runs["two"] / "model.safetensors")), load_file(str(assets["root"] / "cut.cait" /
                                                                            "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_cli_under_a_real_torchrun_launch(assets, tmp_path):
    cache = tmp_path / "cache"
    write_ideal_tables(cache / "latency", tiny_vit(**ARGS), 16)
    out = tmp_path / "o"
    done = launch(["-m", "cait_cli", "compress", assets["model"], "--data", assets["data"], "--out", out,
                   "--calib-steps", "1", "--finetune-steps", "1", "--batch-size", "4", "--bench-batch-size", "16",
                   "--workers", "0", "--device", "cpu", "--target-speedup", "1.2", "--no-replan"], 2,
                  env={"CAIT_CACHE": str(cache)})
    # rank 0 exits 3 when the measured speed misses on a busy machine (torchrun then exits 1)
    assert done.returncode == 0 or "exitcode  : 3" in done.stderr, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("original vs compressed") == 1
    assert "global batch 8 (4 per process)" in done.stdout
    assert json.loads((out / "report.json").read_text())["training"]["processes"] == 2


def test_a_plain_cuda_device_gets_an_index_before_set_device(monkeypatch):
    # torch.cuda.set_device(torch.device("cuda")) raises ValueError: found on the first GPU run
    import cait_cli.pipeline.distributed as distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(device))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    cluster, device = distributed.join(torch.device("cuda"))
    assert chosen == [torch.device("cuda", 0)] and device == torch.device("cuda", 0) and not cluster.parallel
