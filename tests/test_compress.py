"""`cait compress` end to end on a tiny timm ViT and a generated ImageFolder."""
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import (
    LossLog,
    StopAt,
    make_image_folder,
    save_tiny_timm_dir,
    synthetic_table,
    tiny_vit,
)
from typer.testing import CliRunner

import cait_cli
from cait_cli.errors import CaitError, Interrupted
from cait_cli.interface.cli import app
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.progress import Silent
from cait_cli.pipeline.reports.compress import CompressReport

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    model_dir = save_tiny_timm_dir(root / "tiny", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(root / "data", classes=3, per_class=12)
    return {"model": str(model_dir), "data": str(data), "cache": root / "latency", "root": root}


@pytest.fixture(autouse=True)
def synthetic_latency(monkeypatch):
    """Plan on a synthetic latency table: a table timed on a loaded machine can make a modest target
    look out of reach, and these tests are about the pipeline, not this machine's load."""
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))


def config(assets, out, **overrides) -> CompressConfig:
    base = dict(model=assets["model"], target_speedup=1.2, out=out, data=assets["data"], calib_steps=8,
                finetune_steps=8, batch_size=8, bench_batch_size=16, workers=0, device="cpu",
                checkpoint_every=4, latency_cache=assets["cache"])
    return CompressConfig(**{**base, **overrides})


# The keys users read in report.json, `--json` and CompressResult.report: pinned, not to move unnoticed.
REPORT_KEYS = {"target_speedup", "measured_speedup", "measured_speedup_range", "predicted_speedup", "reached",
               "landed", "band", "device", "batch_size", "precision", "runtime", "repeats", "threads",
               "baseline", "compressed", "skipped_images", "plan", "training", "attempts",
               "first_prediction_error", "cait_version"}
SIDE_KEYS = {"params", "macs", "throughput", "throughput_min", "throughput_max", "peak_memory_mb", "top1", "top5",
             "agreement", "feature_cosine", "images"}
TRAINING_KEYS = {"batch_size_per_process", "processes", "global_batch", "augment", "labels", "labels_note", "loss",
                 "lr", "lr_rule", "compile", "decode", "steps", "teacher", "distill", "token_distill", "temperature",
                 "schedule", "score_lr", "merge_lr"}
STEP_KEYS = {"compiled", "compile_seconds", "compile_steps", "timed_steps", "images_per_second", "fallback"}
PLAN_KEYS = {"schedule", "keep", "predicted_speedup", "tokens", "score"}
ATTEMPT_KEYS = {"plan", "predicted", "measured", "widths"}


def test_compress_end_to_end_reaches_the_measured_target(assets, tmp_path, monkeypatch):
    stand_in_speed(monkeypatch, 1.0)  # landing on a stand-in measurement: this machine's load is not the test
    result = compress(config(assets, tmp_path / "out.cait"))
    out = tmp_path / "out.cait"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS and set(report["baseline"]) == set(report["compressed"]) == SIDE_KEYS
    assert set(report["training"]) == TRAINING_KEYS and set(report["plan"]) == PLAN_KEYS
    assert "finetune" in report["training"]["steps"]
    assert all(set(phase) == STEP_KEYS for phase in report["training"]["steps"].values())
    assert report["attempts"] and all(set(a) == ATTEMPT_KEYS and set(a["plan"]) == PLAN_KEYS
                                      for a in report["attempts"])
    assert json.loads(json.dumps(result.report)) == report  # the Python API's dict is the file
    assert json.loads(CompressReport.from_json(report).to_text()) == report  # read back (cait push) as written
    assert report["compressed"]["agreement"] is not None
    assert report["compressed"]["macs"] < report["baseline"]["macs"]
    assert report["cait_version"] == cait_cli.__version__ != "0+unknown"  # the installed package's own
    # measured side by side, not predicted (timing is the benchmarks' job: here only consistency)
    assert result.reached == (report["measured_speedup"] >= 1.2 * 0.97)
    model = cait_cli.load(str(out))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def stand_in_speed(monkeypatch, factor):
    """Plan on a synthetic latency table and replace the landing measurement by the MAC ratio
    times `factor`: deterministic and monotone, so landing can be checked whatever the machine's load."""
    from cait_cli.method.cost import model_macs

    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))
    seen = []

    def measure(base, slim_model, device, batch, amp, **kwargs):
        assert amp is False  # the job's precision, passed on: bf16 autocast is GPU only
        low, high = kwargs["band"]  # the landing band, which tells the measurement when it can stop
        assert kwargs["forwards"].runtime == "eager" and abs(high / low - 1.06 / 0.99) < 1e-9
        seen.append(model_macs(base) / model_macs(slim_model) * factor)
        return seen[-1]

    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup", measure)
    return seen


class Recorder(Silent):
    def __init__(self):
        self.messages = []

    def message(self, text):
        self.messages.append(text)


@pytest.mark.parametrize("factor", [0.8, 1.25])  # the model runs slower / faster than its MACs say
def test_landing_pushes_or_backs_off_into_the_band(assets, tmp_path, monkeypatch, factor):
    seen = stand_in_speed(monkeypatch, factor)
    progress = Recorder()
    result = compress(config(assets, tmp_path / "o", target_speedup=1.3, calib_steps=0, finetune_steps=0), progress)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    attempts = report["attempts"]
    assert [a["measured"] for a in attempts] == seen and 2 <= len(attempts) <= 6
    assert report["first_prediction_error"] == attempts[0]["predicted"] / attempts[0]["measured"] - 1
    assert not 1.3 * 0.97 <= attempts[0]["measured"] <= 1.3 * 1.08  # the first plan missed the band
    assert 1.3 * 0.97 <= attempts[-1]["measured"] <= 1.3 * 1.08  # and the last landed
    table = [a["predicted"] for a in attempts]  # the latency table's own prediction of each plan
    assert (table[1] > table[0]) if factor < 1 else (table[1] < table[0])  # pushed, or backed off
    assert {"plan", "predicted", "measured"} <= set(attempts[0]) and attempts[0]["plan"]["schedule"] is not None
    chosen = json.loads(json.dumps(result.plan.to_dict()))
    assert chosen == attempts[-1]["plan"] | {"predicted_speedup": attempts[-1]["predicted"]}
    assert sum(m.startswith("re-planned") for m in progress.messages) == len(attempts) - 1


def test_a_band_that_cannot_be_reached_keeps_the_slowest_plan_that_meets_the_target(assets, tmp_path, monkeypatch):
    stand_in_speed(monkeypatch, 1.0)
    measured = iter([3.0, 2.0, 5.0, 2.5, 4.0, 3.5])  # always far above the band, whatever is planned
    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup", lambda *args, **kwargs: next(measured))
    progress = Recorder()
    compress(config(assets, tmp_path / "o", target_speedup=1.2, calib_steps=0, finetune_steps=0), progress)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    speeds = [a["measured"] for a in report["attempts"]]
    assert len(speeds) <= 6
    chosen = min(speeds)
    assert report["plan"] == next(a["plan"] for a in report["attempts"] if a["measured"] == chosen) | {
        "predicted_speedup": report["plan"]["predicted_speedup"]}
    assert sum("could not land" in m for m in progress.messages) == 1


def test_a_landing_near_the_edge_of_the_band_is_measured_again(assets, tmp_path, monkeypatch):
    stand_in_speed(monkeypatch, 1.0)
    by_macs = cait_cli.pipeline.planning.landing.quick_speedup
    calls = []

    def measure(*args, **kwargs):  # the first plan measures inside the band but near its edge, the rest by MACs
        calls.append(1.3 * 1.07 if not calls else by_macs(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup", measure)
    compress(config(assets, tmp_path / "o", target_speedup=1.3, calib_steps=0, finetune_steps=0), Recorder())
    attempts = json.loads((tmp_path / "o" / "report.json").read_text())["attempts"]
    assert len(attempts) >= 2 and attempts[1]["predicted"] < attempts[0]["predicted"]  # backed off from the edge


def test_plan_only_prints_plan_and_writes_nothing(assets, tmp_path, monkeypatch):
    stand_in_speed(monkeypatch, 1.0)  # the plan, not this machine's load, is under test
    progress = Recorder()
    result = compress(config(assets, tmp_path / "x.cait", plan_only=True), progress)
    assert result.out is None and not (tmp_path / "x.cait").exists()
    assert any(m.startswith("plan: merges") and "predicted speedup" in m for m in progress.messages)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_the_plan_is_timed_on_this_device_and_cached(assets, tmp_path, monkeypatch):
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", calibrate_latency)
    progress = Recorder()
    compress(config(assets, tmp_path / "x.cait", target_speedup=1.05, plan_only=True,
                    latency_cache=tmp_path / "cache"), progress)
    assert any("timing blocks on cpu (batch 16, runtime eager)" in m for m in progress.messages)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1


RESUMABLE = dict(replan=False, method="cdcp", target_speedup=1.15)  # CDCP alone: a modest target it can reach


@pytest.fixture(scope="module")
def straight(assets):
    """An uninterrupted run (the plan prunes, so it calibrates): the result an interrupted one must end with."""
    log = LossLog()
    with pytest.MonkeyPatch.context() as patch:  # as synthetic_latency does for each test
        patch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))
        result = compress(config(assets, assets["root"] / "straight.cait", **RESUMABLE), log)
    assert result.plan.keep < 1.0
    return {"result": result, "out": assets["root"] / "straight.cait", "losses": log.losses}


@pytest.mark.parametrize("phase,step,signal_number", [("calibrate", 6, None), ("finetune", 5, None),
                                                      ("finetune", 5, signal.SIGTERM)])
def test_resume_after_interruption_ends_with_the_same_result(assets, tmp_path, straight, phase, step, signal_number):
    out = tmp_path / "b.cait"
    handler = signal.getsignal(signal.SIGTERM)
    how = "stopped by SIGTERM" if signal_number else "interrupted"
    with pytest.raises(Interrupted, match=f"^{how} during {phase} after step {step}/8; .*--resume$") as stopped:
        compress(config(assets, out, **RESUMABLE), StopAt(phase, step, signal_number))
    assert stopped.value.exit_code == (143 if signal_number else 130)
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler went with the loop
    assert not out.exists() and (tmp_path / ".b.cait.cait-run" / "state.pt").is_file()
    log = LossLog()
    resumed = compress(config(assets, out, resume=True, **RESUMABLE), log)
    assert resumed.plan.to_dict() == straight["result"].plan.to_dict()
    assert log.losses["finetune"][-1] == straight["losses"]["finetune"][-1]
    assert len(log.losses["finetune"]) == (8 - step if phase == "finetune" else 8)  # only the steps not done
    a, b = weights(straight["out"]), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".b.cait.cait-run").exists()


def test_a_resume_that_cannot_go_on_is_refused_in_one_line(assets, tmp_path):
    out = tmp_path / "b.cait"
    with pytest.raises(Interrupted):
        compress(config(assets, out, **RESUMABLE), StopAt("calibrate", 4))
    with pytest.raises(CaitError, match="^cannot resume: --target-speedup differ from the interrupted run$"):
        compress(config(assets, out, resume=True, **{**RESUMABLE, "target_speedup": 1.3}))
    (tmp_path / ".b.cait.cait-run" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CaitError, match="^cannot resume from .*cait-run: [^\\n]*$"):
        compress(config(assets, out, resume=True, **RESUMABLE))


def test_a_plan_that_prunes_nothing_spends_the_calibration_steps_on_fine_tuning(assets, tmp_path):
    phases = []

    class Recorder(Silent):
        def start(self, phase, total, done=0):
            phases.append((phase, total))

    opts = dict(method="atme", target_speedup=1.05, calib_steps=3, finetune_steps=2, replan=False)
    result = compress(config(assets, tmp_path / "o", **opts), Recorder())
    assert result.plan.keep == 1.0 and phases == [("finetune", 5)]


def test_same_seed_gives_the_same_model(assets, tmp_path):
    compress(config(assets, tmp_path / "a.cait", replan=False, finetune_steps=4, calib_steps=4))
    compress(config(assets, tmp_path / "b.cait", replan=False, finetune_steps=4, calib_steps=4))
    a, b = weights(tmp_path / "a.cait"), weights(tmp_path / "b.cait")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_images_are_skipped_and_counted(assets, tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    (data / "train" / "class_0" / "broken.png").write_bytes(b"not a png at all")
    (data / "val" / "class_1" / "broken.jpg").write_bytes(b"\x00" * 10)
    result = compress(config(assets, tmp_path / "out.cait", data=str(data), replan=False))
    assert result.report["skipped_images"] >= 1


def run_cli(*args):
    result = CliRunner().invoke(app, ["compress", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("make_args,message", [
    (lambda a, t: ["no_such_vit_model", "--data", a["data"], "--out", t / "o"], "unknown model"),
    (lambda a, t: ["resnet18", "--weights", "random", "--out", t / "o", "--calib-steps", "0",
                   "--finetune-steps", "0"], "not a timm VisionTransformer"),
    (lambda a, t: [a["model"], "--target-speedup", "0.5", "--data", a["data"], "--out", t / "o"], "at least 1.0"),
    (lambda a, t: [a["model"], "--channel-multiple", "0", "--data", a["data"], "--out", t / "o"],
     "--channel-multiple must be at least 1"),
    (lambda a, t: [a["model"], "--max-keep", "1.5", "--data", a["data"], "--out", t / "o"],
     "--max-keep must be between"),
    (lambda a, t: [a["model"], "--max-keep", "0.8", "--method", "atme", "--data", a["data"], "--out", t / "o"],
     "atme does not prune"),
    (lambda a, t: [a["model"], "--max-keep", "0.8", "--min-keep", "0.9", "--data", a["data"], "--out", t / "o"],
     r"--min-keep must be between 0.25 and --max-keep \(0.8\), got 0.9"),
    (lambda a, t: [a["model"], "--target-speedup", "500", "--data", a["data"], "--out", t / "o",
                   "--device", "cpu", "--bench-batch-size", "8"], r"beyond .*at most"),
    (lambda a, t: [a["model"], "--data", t / "missing", "--out", t / "o"], "does not exist"),
    (lambda a, t: [a["model"], "--data", t / "empty", "--out", t / "o"], "no images found"),
    (lambda a, t: [a["model"], "--out", t / "o"], "--data is needed"),
    (lambda a, t: [a["model"], "--data", a["data"], "--out", t / "exists"], "already exists"),
    (lambda a, t: [a["model"], "--data", a["data"], "--out", t / "o", "--resume"], "nothing to resume"),
])
def test_bad_input_is_one_clear_line(assets, tmp_path, make_args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "exists").mkdir()
    code, output = run_cli(*make_args(assets, tmp_path), "--workers", "0")
    assert code == 1, output
    assert re.search(message, output), output
    lines = output.strip().splitlines()
    assert "Traceback" not in output and lines[-1].startswith("error:")
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "o").exists()


def test_existing_out_is_replaced_with_overwrite(assets, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.txt").write_text("old")
    code, output = run_cli(assets["model"], "--data", assets["data"], "--out", tmp_path / "o", "--overwrite",
                           "--calib-steps", "2", "--finetune-steps", "2", "--batch-size", "8",
                           "--bench-batch-size", "16", "--workers", "0", "--target-speedup", "1.2",
                           "--device", "cpu")
    assert code in (0, 3), output  # 3: measured speed missed on a loaded machine, said plainly
    assert not (tmp_path / "o" / "old.txt").exists() and (tmp_path / "o" / "report.json").is_file()
    assert "original vs compressed" in output


def test_unwritable_out_is_one_clear_line(assets, tmp_path, monkeypatch):
    import cait_cli.atomic as atomic

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    with pytest.raises(CaitError, match="Permission denied"):
        compress(config(assets, tmp_path / "o", calib_steps=0, finetune_steps=0, replan=False))
    assert not (tmp_path / "o").exists()


def test_a_run_from_before_min_keep_resumes_at_its_default(tmp_path):
    from cait_cli.pipeline.compress import _check_resumable, jsonable_config
    from cait_cli.pipeline.distributed import Cluster
    from cait_cli.pipeline.planning.plan import Plan
    from cait_cli.pipeline.state import RunRecord

    cfg = CompressConfig(model="m", target_speedup=1.5, out=tmp_path / "o", data="d")
    older = {k: v for k, v in jsonable_config(cfg).items() if k != "min_keep"}  # an older run did not record it
    record = RunRecord(older, processes=1, plan=Plan([], 1.0, 1.0), lr_rule=None, calibrate=False)
    _check_resumable(record, cfg, Cluster())
    cfg.min_keep = 0.9
    with pytest.raises(CaitError, match="--min-keep differ"):
        _check_resumable(record, cfg, Cluster())


def test_the_checkpoint_is_the_plan_the_report_names_after_a_refuted_replan(assets, tmp_path, monkeypatch):
    """Landing measures plan A far too fast, re-plans to B (in the band, not the inner band), and the
    next re-plan proposes A again: measured before, so landing stops and keeps B. Asking whether A
    was measured must not leave the student at A: the written checkpoint, the report's plan and the
    model the final speedup was measured on are all B."""
    from cait_cli.method.widths import block_widths
    from cait_cli.pipeline.planning import landing
    from cait_cli.pipeline.planning.plan import Plan

    stand_in_speed(monkeypatch, 1.0)
    measured = iter([1.3 * 1.15, 1.3 * 1.07])
    monkeypatch.setattr(landing, "quick_speedup", lambda *args, **kwargs: next(measured))
    replan, proposed = landing._replan, []

    def replan_then_propose_the_first_again(job, goal, speed):
        proposed.append(replan(job, goal, speed) if not proposed else Plan.from_dict(measured_plans[0]))
        return proposed[-1]

    measured_plans, real_measure = [], landing._measure

    def measure(job, student, plan, speed, inner):
        measured_plans.append(plan.to_dict())
        return real_measure(job, student, plan, speed, inner)

    final = {}
    real_models = cait_cli.pipeline.compress.measure_models

    def measure_models(base, compressed, *args, **kwargs):
        final.update(schedule=list(compressed.cait_schedule), widths=block_widths(compressed))
        return real_models(base, compressed, *args, **kwargs)

    monkeypatch.setattr(landing, "_replan", replan_then_propose_the_first_again)
    monkeypatch.setattr(landing, "_measure", measure)
    monkeypatch.setattr(cait_cli.pipeline.compress, "measure_models", measure_models)
    compress(config(assets, tmp_path / "o", target_speedup=1.3, calib_steps=4, finetune_steps=0))
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    attempts = report["attempts"]
    assert len(attempts) == 2 and len(proposed) == 2  # A, B, then A proposed again and refused
    named = [a for a in attempts if a["plan"] | {"predicted_speedup": 0} == report["plan"] | {"predicted_speedup": 0}]
    assert named == [attempts[1]]  # B: the one in the band
    assert (attempts[0]["plan"]["schedule"], attempts[0]["widths"]) != (attempts[1]["plan"]["schedule"],
                                                                      attempts[1]["widths"])
    written = cait_cli.load(str(tmp_path / "o"))
    schedule = [[s.block, s.axis] for s in written.cait_schedule]
    assert schedule == attempts[1]["plan"]["schedule"]
    assert [[w.qk, w.mlp] for w in block_widths(written)] == attempts[1]["widths"]
    assert [[s.block, s.axis] for s in final["schedule"]] == schedule  # the final speedup: measured on B
    assert final["widths"] == block_widths(written)

    from cait_cli.interface.report import landing_line
    from cait_cli.pipeline.reports.compress import CompressReport

    error = attempts[0]["predicted"] / attempts[0]["measured"] - 1
    assert report["first_prediction_error"] == error  # what the planner's first prediction missed by
    assert landing_line(CompressReport.from_json(report)) == (
        f"landing: 2 measurements; the first model measured {attempts[0]['measured']:.2f}x, "
        f"predicted {attempts[0]['predicted']:.2f}x ({error:+.0%})")


def cli_args(assets, out, *more):
    return [assets["model"], "--data", assets["data"], "--out", out, "--batch-size", "8", "--bench-batch-size", "16",
            "--workers", "0", "--target-speedup", "1.2", "--device", "cpu", "--no-replan", *more]


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert "Traceback" not in output and sum(line.startswith("error:") for line in lines) == 1, output
    assert lines[-1].startswith("error:"), output
    return lines[-1]


@pytest.mark.parametrize("signal_number,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_cli_run_keeps_its_checkpoint_and_says_how_to_resume(assets, tmp_path, monkeypatch, signal_number,
                                                                      exit_code):
    from cait_cli.interface.progress import RichProgress

    advance = RichProgress.advance

    def advance_then_stop(progress, step, **metrics):  # Ctrl-C, or a scheduler's SIGTERM, at fine-tuning step 2
        advance(progress, step, **metrics)
        if progress._phase == "finetune" and step == 2:
            os.kill(os.getpid(), signal_number)

    monkeypatch.setattr(RichProgress, "advance", advance_then_stop)
    # Ctrl-C as a terminal delivers it, even where pytest was started in the background (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, output = run_cli(*cli_args(assets, tmp_path / "o", "--calib-steps", "2", "--finetune-steps", "4"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == exit_code, output
    line = one_error_line(output)
    assert "during finetune after step 2/" in line and line.endswith("continue with the same command plus --resume")
    assert (tmp_path / ".o.cait-run" / "state.pt").is_file() and not (tmp_path / "o").exists()


def full_disk(obj, path, *args, **kwargs):
    """torch.save on a full disk: part of the file written, then PyTorch's RuntimeError (not OSError)."""
    Path(path).write_bytes(b"PK\x03\x04 the first bytes")
    raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                       "data/3: file write failed")


def test_a_full_disk_while_saving_the_training_state_is_one_line_and_leaves_nothing(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", full_disk)
    code, output = run_cli(*cli_args(assets, tmp_path / "o", "--calib-steps", "2", "--finetune-steps", "2"))
    assert code == 1, output
    line = one_error_line(output)
    assert re.search(r"cannot write .*state\.pt: .*file write failed \(needs [\d.]+ [KM]B, [\d.]+ [KMGT]B free "
                     r"there\)$", line), line
    assert list(tmp_path.iterdir()) == []  # no state.pt.tmp, run.json.tmp, run folder or --out


def test_a_saved_plan_is_slimmed_again_as_it_is(assets, tmp_path, monkeypatch):
    """--plan: the second run (another seed, so other calibration batches) slims the first run's
    merges and budget, read from its checkpoint (report.json) or its config.json, and does not
    re-plan even where the stand-in measurement misses the band."""
    stand_in_speed(monkeypatch, 1.0)
    first = compress(config(assets, tmp_path / "a", target_speedup=1.3, calib_steps=4, finetune_steps=0)).report
    stand_in_speed(monkeypatch, 0.8)  # this "machine" runs the same plan slower: the plan stays
    for name, source in (("b", tmp_path / "a"), ("c", tmp_path / "a" / "config.json")):  # folder: report.json
        again = compress(config(assets, tmp_path / name, target_speedup=1.3, calib_steps=4, finetune_steps=0,
                                seed=1, plan=str(source))).report
        assert (again["plan"]["schedule"], again["plan"]["keep"]) == (first["plan"]["schedule"],
                                                                      first["plan"]["keep"])
        assert again["attempts"] == []  # no landing: the plan is slimmed as it is, measured once at the end


@pytest.mark.parametrize("content,message", [
    (None, "no such file or folder"),
    ({"target_speedup": 1.9}, "no plan could be read"),
    ({"plan": {"schedule": [[9, "w"]], "keep": 1.0}}, "outside the model's 4 blocks"),
    ({"plan": {"schedule": [], "keep": 0.6}}, "--method atme does not prune"),
])
def test_a_plan_that_cannot_be_used_is_one_line_and_nothing_is_written(assets, tmp_path, content, message):
    source = tmp_path / "plan.json"
    if content is not None:
        source.write_text(json.dumps(content))
    code, output = run_cli(assets["model"], "--data", assets["data"], "--out", tmp_path / "o", "--plan", source,
                           "--method", "atme", "--calib-steps", "0", "--finetune-steps", "1", "--batch-size", "4",
                           "--workers", "0", "--device", "cpu", "--bench-batch-size", "8")
    assert code == 1 and message in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()
