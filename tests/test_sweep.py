"""`cait sweep`: one checkpoint per target on a tiny timm ViT, the work that does not depend on the
target done once, resume point by point, bad input refused in one line with nothing written.

Speed is a stand-in (the MAC ratio, for landing and for the final measurement) and the latency
table synthetic: these tests are about the sweep, not this busy machine's timings."""
import json
import re
import sys

import pytest
import torch
from safetensors.torch import load_file
from support import LossLog, StopAt, mac_speeds, make_image_folder, save_tiny_timm_dir, synthetic_table, tiny_vit
from typer.testing import CliRunner

import cait_cli
from cait_cli.errors import CaitError, Interrupted
from cait_cli.interface.cli import app
from cait_cli.interface.plot import NO_MATPLOTLIB, draw_sweep
from cait_cli.method.cost import model_macs
from cait_cli.pipeline.reports.parts import ModelSide, Speedup, Timing
from cait_cli.pipeline.reports.sweep import SweepPoint, SweepReport, on_front

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
QUICK = dict(calib_steps=1, finetune_steps=1, batch_size=8, bench_batch_size=16, workers=0, device="cpu",
             checkpoint_every=1)
QUICK_CLI = ["--calib-steps", "1", "--finetune-steps", "1", "--batch-size", "8", "--bench-batch-size", "16",
             "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    model = save_tiny_timm_dir(root / "tiny", tiny_vit(**ARGS), ARGS)
    return {"model": str(model), "data": str(make_image_folder(root / "data", classes=3, per_class=8))}


@pytest.fixture(autouse=True)
def counted(monkeypatch):
    """Stand-in speeds, and counts of the work a sweep should do once: loading the model, timing the
    latency table, running the original over the held-out images."""
    import cait_cli.pipeline.compress as compress_module

    calls = {"load_model": 0, "calibrate_latency": 0, "measure_reference": 0, "compress": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(compress_module, "calibrate_latency",
                        counting("calibrate_latency", lambda model, *a, **k: synthetic_table(model)))
    monkeypatch.setattr(compress_module, "load_model", counting("load_model", compress_module.load_model))
    monkeypatch.setattr(compress_module, "measure_reference",
                        counting("measure_reference", compress_module.measure_reference))
    monkeypatch.setattr("cait_cli.pipeline.sweep.compress", counting("compress", compress_module.compress))
    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup",
                        lambda base, slim, *args, **kwargs: model_macs(base) / model_macs(slim))
    monkeypatch.setattr("cait_cli.pipeline.measuring.report.measure_throughput", mac_speeds)
    return calls


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_every_target_is_compressed_as_compress_does_with_the_shared_work_done_once(assets, tmp_path, counted):
    out = tmp_path / "s"
    rows = cait_cli.sweep(assets["model"], [1.2, 1.5], data=assets["data"], out=out, **QUICK)
    written = json.loads((out / "sweep.json").read_text())
    assert [row.to_json() for row in rows] == written["points"]  # the Python API's rows are sweep.json's
    assert all(isinstance(row, SweepPoint) for row in rows)
    assert [row.target for row in rows] == [1.2, 1.5] and [row.checkpoint for row in rows] == [
        str(out / "1.2x.cait"), str(out / "1.5x.cait")]
    assert counted == {"load_model": 1, "calibrate_latency": 1, "measure_reference": 1, "compress": 2}
    for row in rows:
        report = json.loads((out / f"{row.target:g}x.cait" / "report.json").read_text())
        assert (row.measured.ratio, row.top1, row.agreement, row.macs) == (
            report["measured_speedup"], report["compressed"]["top1"], report["compressed"]["agreement"],
            report["compressed"]["macs"])
        assert report["baseline"]["top1"] == written["original"]["top1"]  # one reference for every point
    assert rows[1].macs < rows[0].macs and all(row.error is None and not row.resumed for row in rows)
    shared = {work["what"]: work for work in written["shared"]}
    assert shared["the latency table"]["per_run"] is False and shared["loading the model and opening the data"][
        "per_run"] is True
    assert written["saved_seconds_estimate"] == sum(w["seconds"] or 0 for w in written["shared"] if w["per_run"])
    assert (written["plot"] == "sweep.png") == (out / "sweep.png").is_file() != bool(written["plot_skipped"])

    lone = cait_cli.compress(assets["model"], target_speedup=1.5, data=assets["data"], out=tmp_path / "lone.cait",
                             **QUICK)  # the point at 1.5x is the checkpoint a run of its own writes
    a, b = weights(out / "1.5x.cait"), weights(tmp_path / "lone.cait")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert lone.report["compressed"]["top1"] == rows[1].top1


def test_resume_reads_back_the_written_points_and_computes_only_the_new(assets, tmp_path, counted):
    out = tmp_path / "s"
    first = cait_cli.sweep(assets["model"], [1.2], data=assets["data"], out=out, **QUICK)
    written_at = (out / "1.2x.cait" / "model.safetensors").stat().st_mtime_ns
    rows = cait_cli.sweep(assets["model"], [1.2, 1.5], data=assets["data"], out=out, resume=True, **QUICK)
    assert counted["compress"] == 2  # 1.2x once, 1.5x once
    assert (out / "1.2x.cait" / "model.safetensors").stat().st_mtime_ns == written_at
    assert [row.resumed for row in rows] == [True, False] and rows[0].seconds is None
    keep = lambda row: {k: v for k, v in row.to_json().items() if k not in ("resumed", "seconds", "pareto")}  # noqa
    assert keep(rows[0]) == keep(first[0])
    assert json.loads((out / "sweep.json").read_text())["points"] == [row.to_json() for row in rows]
    before = dict(counted)
    code, output = run_cli(assets["model"], "--data", assets["data"], "--out", out, "--resume", *QUICK_CLI,
                           "--speedups", "1.2", "1.5")  # all written: read back, nothing prepared, the table printed
    assert code == 0, output
    assert counted == before and "read back from their checkpoints (--resume): 1.2x, 1.5x" in output
    assert re.search(rf"1\.5x +│ +{rows[1].measured.ratio:.2f}x \(.*│ 1\.5x\.cait +│", output), output


def test_an_interrupted_point_resumes_where_it_stopped(assets, tmp_path):
    out = tmp_path / "s"
    options = dict(QUICK, calib_steps=0, finetune_steps=4)  # 4 fine-tuning steps, whatever the plan prunes
    with pytest.raises(Interrupted, match="--resume$"):
        cait_cli.sweep(assets["model"], [1.2], data=assets["data"], out=out, progress=StopAt("finetune", 2),
                       **options)
    assert (out / ".1.2x.cait.cait-run" / "state.pt").is_file() and (out / "sweep.json").is_file()
    log = LossLog()
    rows = cait_cli.sweep(assets["model"], [1.2], data=assets["data"], out=out, progress=log, resume=True, **options)
    assert len(log.losses["finetune"]) == 2 and rows[0].error is None  # steps 3 and 4 only
    with pytest.raises(CaitError, match=r"^cannot resume: --finetune-steps differ from the sweep in .*s$"):
        cait_cli.sweep(assets["model"], [1.2], data=assets["data"], out=out, resume=True, **dict(options,
                                                                                                  finetune_steps=3))


def test_a_point_compress_refuses_says_so_in_its_row_and_the_sweep_goes_on(assets, tmp_path, monkeypatch):
    import cait_cli.pipeline.sweep as sweep_module

    real = sweep_module.compress

    def refuse_one(cfg, progress=None, prepared=None):
        if cfg.target_speedup == 1.2:
            raise CaitError("could not land")
        return real(cfg, progress, prepared)

    monkeypatch.setattr(sweep_module, "compress", refuse_one)
    rows = cait_cli.sweep(assets["model"], [1.2, 1.5], data=assets["data"], out=tmp_path / "s", **QUICK)
    assert rows[0].error == "could not land" and rows[0].measured is None and rows[0].status == "not compressed"
    assert rows[1].error is None and (tmp_path / "s" / "1.5x.cait" / "report.json").is_file()


def run_cli(*args):
    result = CliRunner().invoke(app, ["sweep", *map(str, args)], env={"COLUMNS": "200"})  # a row on one line
    return result.exit_code, result.output


@pytest.mark.parametrize("speedups,message", [
    ([], r"no speedups to sweep"),
    (["1.0", "1.5"], r"every speedup must be above 1\.0 .*got 1x$"),
    (["0.8"], r"above 1\.0 .*got 0\.8x$"),
    (["1.5", "1.2", "1.50"], r"^error: 1\.5x asked for more than once"),
    (["1.2", "500", "900"], r"500x, 900x are beyond what this model can reach on this device \(about [\d.]+x at "
                            r"most\); nothing was trained"),
])
def test_bad_targets_are_one_line_and_nothing_is_written(assets, tmp_path, speedups, message, counted):
    code, output = run_cli(assets["model"], "--data", assets["data"], "--out", tmp_path / "s", *QUICK_CLI,
                           *(["--speedups", *speedups] if speedups else []))
    assert code == 1, output
    assert re.search(message, one_error_line(output)), output
    assert not (tmp_path / "s").exists() and counted["compress"] == 0


@pytest.mark.parametrize("flags,message", [
    ([], r"s already exists; choose another --out, or pass --resume"),
    (["--resume"], r"nothing to resume: no sweep\.json in .*s$"),
    (["--resume", "--overwrite"], r"not both$"),
])
def test_a_folder_that_is_not_this_sweeps_is_refused_in_one_line(assets, tmp_path, flags, message):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    code, output = run_cli(assets["model"], "--data", assets["data"], "--out", tmp_path / "s", *QUICK_CLI, *flags,
                           "--speedups", "1.2")
    assert code == 1 and re.search(message, one_error_line(output)), output
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["notes.txt"]


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert "Traceback" not in output and sum(line.startswith("error:") for line in lines) == 1, output
    return lines[-1]


def point(target, ratio, top1, landed=True):
    return SweepPoint(target, f"{target:g}x.cait", Speedup(ratio, ratio * 0.98, ratio * 1.02), top1=top1, landed=landed)


def test_the_pareto_front_keeps_the_points_nothing_beats():
    original = ModelSide(top1=0.80, images=100)
    marked = on_front([point(1.3, 1.31, 0.81), point(1.6, 1.58, 0.78), point(1.9, 1.95, 0.79),
                       point(2.2, 2.1, 0.70), point(2.5, 2.4, 0.72)], original)
    assert [p.pareto for p in marked] == [True, False, True, False, True]
    beaten = on_front([point(1.1, 1.05, 0.79)], ModelSide(top1=0.80, images=100))  # slower than asked, no better
    assert beaten[0].pareto is True  # faster than the original: a trade, not beaten
    assert on_front([point(1.1, 0.95, 0.79)], original)[0].pareto is False  # slower and worse than the original


def report_of(points):
    return SweepReport("tiny", "s", on_front(points, ModelSide(top1=0.8, images=10)),
                       original=ModelSide(top1=0.8, images=10), timing=Timing("test CPU", 16, "fp32, eager"))


def test_the_plot_is_drawn_or_says_why_not(tmp_path, monkeypatch):
    report = report_of([point(1.3, 1.31, 0.81), point(1.9, 1.7, 0.78, landed=False)])
    pytest.importorskip("matplotlib")
    assert draw_sweep(report, tmp_path / "sweep.png") is None
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert draw_sweep(report, tmp_path / "again.png") == NO_MATPLOTLIB and not (tmp_path / "again.png").exists()
    assert draw_sweep(report_of([SweepPoint(2.0, "2x.cait", error="beyond")]), tmp_path / "x.png") == (
        "no target was compressed")
