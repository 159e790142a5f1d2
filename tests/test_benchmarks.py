"""The proof script runs end to end on a tiny reference (its numbers are the benchmark's business)."""
import json
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from cait_cli.errors import CaitError
from support import make_image_folder, save_tiny_timm_dir, synthetic_table, tiny_vit, write_fashion_idx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import proof  # noqa: E402

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)


def tiny_proof(tmp_path, monkeypatch, *more: str):
    """proof.py's command line (sys.argv) on a tiny reference, CAIT at 1.1x only; its --out."""
    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    out = tmp_path / "proof"
    monkeypatch.setattr(sys, "argv", [
        "proof.py", "--reference", str(reference), "--data", str(data), "--speedups", "1.1", "--methods", "cait",
        "--steps", "2", "--batch-size", "4", "--bench-batch-size", "4", *more,
        "--work", str(tmp_path / "work"), "--out", str(out)])
    return out


def test_proof_runs_every_row_with_a_second_seed(tmp_path, monkeypatch):
    out = tiny_proof(tmp_path, monkeypatch, "--second-seed", "1")
    proof.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        (proof.CONTROL, 0), ("cait", 0), (proof.CONTROL, 1), ("cait", 1)]
    assert "| seed |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
    planned = rows[1]["setting"]  # compress's own measurement, and whether it fell under the target
    assert planned == "-" or re.search(r"; \d+\.\d\dx in compress(, under the target)?$", planned), planned

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(proof, "compress", no_training)
    monkeypatch.setattr(proof, "finetune", no_training)
    proof.main()  # the same command again: every job read back from --work
    again = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["method"], r["seed"], r["setting"], r["params"]) for r in again] == [
        (r["method"], r["seed"], r["setting"], r["params"]) for r in rows]
    # every row with a model (the control at least; cait when the tiny model reached the target) is re-measured
    assert all(r["top1"] is not None and r["measured_speedup"] for r in again if r["setting"] != "-")


def test_proof_trains_again_when_the_budget_changes(tmp_path, monkeypatch):
    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    argv = ["proof.py", "--reference", str(reference), "--data", str(data), "--speedups", "1.1", "--methods",
            "cait", "--steps", "2", "--batch-size", "4", "--bench-batch-size", "4", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "proof")]
    monkeypatch.setattr(sys, "argv", argv)
    proof.main()
    trained = []
    real_finetune = proof.finetune
    monkeypatch.setattr(proof, "finetune", lambda *a, **k: trained.append(1) or real_finetune(*a, **k))
    monkeypatch.setattr(sys, "argv", [a if a != "2" else "3" for a in argv])  # --steps 3
    proof.main()
    assert trained  # the control was trained again with the new budget


def test_proof_shares_the_control_across_recipes_that_change_only_cait(tmp_path):
    reference, budget = tiny_vit(**ARGS), {"steps": 500, "lr": 3e-4}
    default = proof.Caches.under(tmp_path, reference, budget, proof.Recipe())
    own_schedule = proof.Caches.under(tmp_path, reference, budget, proof.Recipe(schedule="continuous", calib_share=0.1))
    hotter = proof.Caches.under(tmp_path, reference, budget, proof.Recipe(temperature=2.0))
    assert own_schedule.shared.root == default.shared.root  # the control and peers are reused
    assert own_schedule.ours.root != default.ours.root  # cait's arms train again
    assert hotter.shared.root != default.shared.root and hotter.ours.root != default.ours.root


def test_proof_keeps_cait_arms_in_the_recipe_cache_and_the_control_and_peers_in_the_shared_one(tmp_path,
                                                                                                monkeypatch):
    from types import SimpleNamespace

    from benchmarks.job_cache import JobCache
    monkeypatch.setattr(proof, "ours", lambda bench, method, target, keep_band=None: (
        proof.Row(method, target, f"band {keep_band}", True, True), None))
    monkeypatch.setattr(proof, "control", lambda bench: (proof.Row(proof.CONTROL, 1.0, "-", True, True), None))
    monkeypatch.setattr(proof, "tome", lambda bench, target: [(proof.Row("tome", target, "r 1", True, False), None)])
    caches = proof.Caches(JobCache(tmp_path / "ours"), JobCache(tmp_path / "shared"))
    protocol = proof.Protocol([1.9], ["cait", "atme", "cdcp", "tome"], keep_bands=[0.4])
    proof.run_methods(SimpleNamespace(seed=0), protocol, proof.PruneChoice(None, 0, score=len), caches, [], {})
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "atme_1.9_seed0.pt", "cait-keep0.4-0.5_1.9_seed0.pt", "cait_1.9_seed0.pt", "cdcp_1.9_seed0.pt"]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["control_seed0.pt", "tome_1.9_seed0.pt"]


@pytest.mark.parametrize("flag, value, said", [
    ("--calib-share", "1", "--calib-share must be at least 0 and below 1, got 1"),
    ("--timing-runs", "0", "--timing-runs must be at least 1, got 0")])
def test_proof_refuses_a_setting_out_of_its_range(tmp_path, monkeypatch, capsys, flag, value, said):
    monkeypatch.setattr(sys, "argv", ["proof.py", "--data", str(tmp_path), flag, value,
                                      "--out", str(tmp_path / "proof")])
    with pytest.raises(SystemExit) as exit_info:
        proof.main()
    assert exit_info.value.code != 0
    assert said in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_proof_times_every_row_in_each_run_and_reports_the_median_of_the_runs(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import proof_report
    reference, slim = tiny_vit(**ARGS).eval(), tiny_vit(**{**ARGS, "depth": 2}).eval()
    bench = SimpleNamespace(reference=reference, input_size=(3, 32, 32), bench_batch=2, device=torch.device("cpu"),
                            log=lambda line: None)
    rows = [proof.Row("cait", 1.9, "merge after none, keep 100%", True, True)]
    test = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))]
    timed = []
    real = proof.measure_throughput

    def quick(models, size, cfg, device):  # the proof's own settings, but only 3 short repeats
        timed.append(cfg)
        return real(models, size, replace(cfg, warmup=0, repeats=3, min_run_seconds=0.0), device)

    monkeypatch.setattr(proof, "measure_throughput", quick)
    proof.measure_all(bench, rows, {0: slim}, test, runs=3)
    row = rows[0]
    assert len(timed) == 3 and len(row.speedup_runs) == 3
    assert row.measured_speedup == sorted(row.speedup_runs)[1]
    assert row.speedup_range[0] <= min(row.speedup_runs) <= max(row.speedup_runs) <= row.speedup_range[1]
    meta = dict(bench_batch_size=2, steps=1, batch_size=2, lr=1e-4, seconds=60, reference="ref", reference_top1=0.5,
                reference_params=1, reference_macs=1, timing_runs=3)
    text = "\n".join(proof_report.table(meta, [asdict(row)]))
    assert "in each of 3 runs" in text
    assert f"{row.measured_speedup:.2f}x ({min(row.speedup_runs):.2f}-{max(row.speedup_runs):.2f})" in text


@pytest.mark.parametrize("flag", ["--keep-bands-at", "--prune-search-at"])
def test_proof_refuses_a_target_it_does_not_run(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["proof.py", "--data", str(tmp_path), "--speedups", "1.5", "--keep-bands",
                                      "0.8", flag, "1.9", "--out", str(tmp_path / "proof")])
    with pytest.raises(SystemExit) as exit_info:
        proof.main()
    assert exit_info.value.code != 0
    assert f"{flag} 1.9 is not a target of this run (1.5)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_proof_runs_only_the_best_torch_pruning_setting_away_from_its_search(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch.nn as nn
    from benchmarks.job_cache import JobCache

    best_at = {1.9: "global L2", 1.5: "uniform Taylor"}

    def fake_pruned_at(bench, target, setting):  # a model whose "top-1" says which setting made it
        model = nn.Linear(1, 1)
        model.top1 = 0.9 if setting.label == best_at[target] else 0.5
        return proof.Row("torch-pruning", target, f"{setting.label}, ratio 0.50", True, True), model

    monkeypatch.setattr(proof, "pruned_at", fake_pruned_at)
    prune = proof.PruneChoice(search_at=[1.9, 1.5], main_seed=0, score=lambda model: model.top1)
    rows, models, cache = [], {}, proof.Caches(JobCache(tmp_path), JobCache(tmp_path))
    best_at[2.5] = best_at[1.9]
    main_jobs = proof.Protocol([2.5, 1.5, 1.9], ["torch-pruning"], with_control=False)
    proof.run_methods(SimpleNamespace(seed=0), main_jobs, prune, cache, rows, models)
    again = proof.Protocol([1.9], ["torch-pruning"], with_control=False)
    proof.run_methods(SimpleNamespace(seed=1), again, prune, cache, rows, models)
    every = ["uniform L2", "uniform Taylor", "global L2", "global Taylor"]
    assert [(r.target, r.seed, r.setting.split(",")[0]) for r in rows] == [
        *[(1.5, 0, label) for label in every], *[(1.9, 0, label) for label in every],
        (2.5, 0, "global L2"), (1.9, 1, "global L2")]  # searched targets first, then the best at the nearest


def test_proof_holds_cait_in_each_keep_band_at_the_chosen_targets(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks.job_cache import JobCache

    def fake_ours(bench, method, target, keep_band=None):
        return proof.Row(method, target, f"band {keep_band}", True, True), None

    monkeypatch.setattr(proof, "ours", fake_ours)
    rows = []
    protocol = proof.Protocol([1.9, 1.5], ["cait"], keep_bands=[0.9, 0.7], bands_at=[1.9], with_control=False)
    caches = proof.Caches(JobCache(tmp_path), JobCache(tmp_path))
    proof.run_methods(SimpleNamespace(seed=0), protocol, proof.PruneChoice(None, 0, score=len), caches, rows, {})
    assert [(r.target, r.setting) for r in rows] == [
        (1.9, "band None"), (1.9, "band (0.9, 1.0)"), (1.9, "band (0.7, 0.8)"), (1.5, "band None")]


def test_proof_report_sweeps_the_keep_bands_and_pairs_the_seeds():
    from benchmarks.proof_report import table

    def row(method, setting, top1, seed=0, target=1.9):
        return dict(method=method, target=target, setting=setting, seed=seed, measured_speedup=1.9,
                    speedup_range=[1.8, 2.0], top1=top1, agreement=0.9, params=1e5, macs=1e6, keeps_grid=True, note="")

    meta = dict(command="proof.py", device="cpu", threads=2, torch="2", bench_batch_size=64, steps=250,
                batch_size=64, lr=1e-4, seconds=60, reference="ref", reference_top1=0.8, reference_params=1e5,
                reference_macs=1e6)
    rows = [row("cait", "merge after 6, keep 63%", 0.81), row("atme", "merge after 3+7, keep 100%", 0.79),
            row("cait (keep 80%-90%)", "merge after 4, keep 85%", 0.80),
            row("torch-pruning", "uniform L2, ratio 0.68", 0.70), row("cait", "merge after 5, keep 60%", 0.815, 1),
            row("torch-pruning", "uniform L2, ratio 0.66", 0.69, 1), row("cait", "keep 70%", 0.82, 0, 1.5)]
    text = "\n".join(table(meta, rows))
    sweep = text.split("## What pruning buys at 1.9x")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in sweep.splitlines() if "merge after" in line] == [
        "atme", "(keep 80%-90%)", "planner's choice"]  # least pruned first; 1.5x is not swept
    spread = text.split("## Seed spread (seeds 0 and 1)")[1]
    assert "| 1.9x | cait | 81.00 | 81.50 | +0.50 |" in spread
    assert "| 1.9x | torch-pruning (uniform L2) | 70.00 | 69.00 | -1.00 |" in spread


def test_plan_scores_lists_every_landing_plan_and_both_picks(tmp_path, monkeypatch):
    from benchmarks import plan_scores
    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    out = tmp_path / "scores.md"
    monkeypatch.setattr(plan_scores, "calibrate_latency", lambda model, *args, **kwargs: synthetic_table(model))
    monkeypatch.setattr(sys, "argv", ["plan_scores.py", "--model", str(reference), "--data", str(data),
                                      "--target", "1.55", "--images", "8", "--bench-batch-size", "4",
                                      "--out", str(out)])
    plan_scores.main()
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows and "fewest-pruned" in text and "spread over budgets" in text
    kls = [float(row.split("|")[2]) for row in rows]
    assert kls == sorted(kls)


def test_feature_score_is_zero_for_the_original_and_grows_with_merging(make_vit):
    from benchmarks.plan_scores import feature_score
    from cait_cli.method.atme import MergeStep
    model = make_vit().eval()
    score = feature_score(model, lambda: torch.randn(4, 3, 32, 32), multiple=1, indices=[1, 3])
    assert score([], 1.0) == pytest.approx(0.0, abs=1e-6)
    assert score([MergeStep(1, "w")], 1.0) > 0


def test_timing_noise_reads_the_same_timings_by_each_estimator():
    from benchmarks.timing_noise import ESTIMATORS
    # a neighbour's load only slows runs down: repeat 2 of "a" and repeat 3 of "b" were disturbed
    a, b = [200.0, 120.0, 198.0, 190.0, 150.0], [100.0, 101.0, 60.0, 99.0, 100.0]
    ratios = [x / y for x, y in zip(a, b)]
    assert ESTIMATORS["fastest"](a, b) == 200.0 / 101.0
    assert ESTIMATORS["median"](a, b) == sorted(ratios)[2]
    # the quietest half: repeats 1, 4 and 5 had both models nearest their best
    assert ESTIMATORS["quiet"](a, b) == sorted([ratios[0], ratios[3], ratios[4]])[1]


def test_segment_runs_end_to_end_with_head_seeds(tmp_path, monkeypatch):
    from benchmarks import segment
    from support import save_compressed_tiny

    made = save_compressed_tiny(tmp_path, ARGS, merge_blocks=[1])
    out = tmp_path / "segment"
    monkeypatch.setattr(sys, "argv", [
        "segment.py", "--reference", made["base"], "--data", made["data"], "--methods", "cait", "--cait", made["ckpt"],
        "--fashion-root", str(write_fashion_idx(tmp_path / "fashion")), "--scene-size", "64", "--train-scenes", "6",
        "--test-scenes", "4", "--head-steps", "2", "--head-batch-size", "2", "--head-seeds", "2",
        "--bench-batch-size", "2", "--repeats", "1", "--out", str(out)])
    segment.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == [segment.REFERENCE, "cait"]
    assert all(len(r["miou_seeds"]) == 2 and r["speedup"] > 0 for r in rows)
    assert "2 head seed(s)" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()


def test_proof_gives_torch_pruning_one_row_per_setting(tmp_path, monkeypatch):
    from functools import partial

    from cait_cli.pipeline.measuring import report

    monkeypatch.setattr(proof, "RATIO_RESOLUTION", 0.3)  # two halvings of the search, not seven
    # short timings (what is asserted is the rows, not their speeds): each search step, then the final
    # measurement of the four pruned models, timed in a few short runs instead of 11 of 0.2 s each
    monkeypatch.setattr(report, "QUICK_REPEATS", (2, 3))
    monkeypatch.setattr(proof, "SpeedConfig", partial(proof.SpeedConfig, min_run_seconds=0.02))
    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    out = tmp_path / "proof"
    monkeypatch.setattr(sys, "argv", [
        "proof.py", "--reference", str(reference), "--data", str(data), "--speedups", "1.1", "--methods",
        "torch-pruning", "--steps", "2", "--batch-size", "4", "--bench-batch-size", "4", "--no-control",
        "--work", str(tmp_path / "work"), "--out", str(out)])
    proof.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    labels = [r["setting"] if r["setting"] != "-" else r["note"] for r in rows]
    assert len(rows) == 4 and [label.split(",")[0].split(":")[0] for label in labels] == [
        "uniform L2", "uniform Taylor", "global L2", "global Taylor"]
    assert len(list((tmp_path / "work").glob("jobs-*/torch-pruning-*_1.1_seed0.pt"))) == 4


def test_gpu_benchmark_refuses_without_cuda_and_its_step_alone_runs(monkeypatch, capsys):
    from types import SimpleNamespace

    import torch
    from benchmarks import gpu, harness

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--models", "deit_tiny"])
    with pytest.raises(SystemExit) as exit_info:
        harness.run_script(gpu.main)
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1 and "CUDA GPU" in err
    args = SimpleNamespace(device="cpu", batch_size=2, steps=1, warmup=1, compile_backend="inductor", peak_tflops=1.0)
    got = gpu.step_alone("deit_tiny", args, compile=False)
    assert got["rate"] > 0 and got["flops"] > 0 and not got["compiled"]


def test_input_speed_times_the_library_loop_on_a_fixed_plan(tmp_path):
    from benchmarks.input_speed import premade_inputs, training_rates

    model = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    rates = training_rates(str(model), premade_inputs(8, ARGS["img_size"], ARGS["num_classes"]), steps=3, batch=2, warmup=0, workers=0,
                           calib_steps=3, keep=0.7)
    assert set(rates) == {"calibrate", "finetune"} and all(rate > 0 for rate in rates.values())


def _run(date: str, commit: str):
    from benchmarks.harness import Run

    return Run("python -m benchmarks.speed --out r.md", date, commit, "CPU", "CPU", 2, {"torch": "2.0"}, "3.11")


def _history(text: str) -> list:
    from benchmarks.harness import table_cells

    rows = [line for line in text.split("\n## History\n")[1].splitlines() if line.startswith("|")]
    return [table_cells(line) for line in rows[2:]]


def test_results_start_with_who_made_them_and_print_what_they_write(tmp_path, monkeypatch, capsys):
    import torch
    from benchmarks import harness
    from cait_cli.pipeline.measuring.measure import device_name

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sys, "argv", ["benchmarks/speed.py", "--out", "r.md"])
    table = harness.Table("model", "speedup", "note")
    table.add("deit_small", "1.90x")  # padded with an empty cell
    table.add("vit", "1.50x", "a | b")  # a pipe stays inside its cell
    out = tmp_path / "r.md"
    text = harness.write_results(out, "Speed", ["Batch 16.", "", *table.lines], headline="deit_small 1.90x")
    assert out.read_text() == text and text in capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "# Speed" and "Command: `python benchmarks/speed.py --out r.md`" in lines
    run = next(line for line in lines if line.startswith("Run: "))
    assert re.match(r"Run: \d{4}-\d\d-\d\d \d\d:\d\d UTC, commit \S+", run), run
    for part in (device_name(torch.device("cpu")), f"{torch.get_num_threads()} threads", f"torch {torch.__version__}"):
        assert part in run, (part, run)
    assert "Headline: deit_small 1.90x" in lines and "| deit_small | 1.90x |  |" in lines
    assert harness.table_cells(next(line for line in lines if line.startswith("| vit"))) == ["vit", "1.50x", "a | b"]
    assert "## History" not in text  # nothing was there before


def test_results_carry_the_run_they_replace_into_history(tmp_path):
    from benchmarks import harness

    out = tmp_path / "r.md"
    for day, commit, body, headline in (("01", "aaa1111", "first body", "deit_small 1.80x"),
                                        ("02", "bbb2222", "second body", "deit_small 1.90x")):
        harness.write_results(out, "Speed", [body], headline, run=_run(f"2026-01-{day} 10:00 UTC", commit))
    text = out.read_text()
    assert "second body" in text and "first body" not in text
    assert _history(text) == [["2026-01-01 10:00 UTC", "aaa1111", "`python -m benchmarks.speed --out r.md`",
                               "deit_small 1.80x"]]
    harness.write_results(out, "Speed", ["third body"], "deit_small 2.00x", run=_run("2026-01-03 10:00 UTC", "ccc3333"))
    assert [row[1] for row in _history(out.read_text())] == ["bbb2222", "aaa1111"]  # one new row, on top
    again = _run("2026-01-03 10:00 UTC", "ccc3333")  # the same run written again (a re-render): no new row
    harness.write_results(out, "Speed", ["third body"], "deit_small 2.00x", run=again)
    assert [row[1] for row in _history(out.read_text())] == ["bbb2222", "aaa1111"]


def test_a_results_stem_with_dots_keeps_them_in_every_file_it_names():
    from benchmarks import harness

    stem = Path("results/proof_2.5x_seed1_cpu")
    assert [harness.beside(stem, ext).name for ext in (".md", ".json", ".png")] == [
        "proof_2.5x_seed1_cpu.md", "proof_2.5x_seed1_cpu.json", "proof_2.5x_seed1_cpu.png"]
    assert harness.beside(Path("results/proof_cpu.md"), ".png") == Path("results/proof_cpu.png")


def test_results_written_over_a_file_from_before_the_harness_keep_its_command(tmp_path):
    from benchmarks import harness

    out = tmp_path / "old.md"
    out.write_text("command: python benchmarks/speed.py --out old.md\n\n| model |\n|---|\n| deit |\n")
    harness.write_results(out, "Speed", ["new"], "x", run=_run("2026-01-02 10:00 UTC", "bbb2222"))
    assert _history(out.read_text()) == [["—", "—", "`python benchmarks/speed.py --out old.md`", "—"]]


def test_a_cait_error_in_a_scripts_main_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from benchmarks import harness, segment

    monkeypatch.setattr(sys, "argv", ["segment.py", "--data", str(tmp_path), "--scene-size", "30",
                                      "--out", str(tmp_path / "seg")])
    with pytest.raises(SystemExit) as exit_info:
        harness.run_script(segment.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err == "error: --scene-size must be a multiple of the patch size (4), got 30\n"
    assert not list(tmp_path.iterdir())


def test_quickstart_records_the_readme_command_and_a_row_per_fresh_run(tmp_path, monkeypatch):
    from benchmarks import quickstart

    def fresh_run(repo, command, work):
        assert command.startswith("pip install -c constraints.txt") and " && cait compress " in command
        report = {"plan": {"schedule": [[5, "w"]], "keep": 0.71}, "attempts": [{"measured": 1.9}],
                  "measured_speedup": 1.87, "measured_speedup_range": [1.55, 2.1], "first_prediction_error": 0.04,
                  "baseline": {"top1": 0.794}, "compressed": {"top1": 0.802}}
        return report, 408, quickstart.printed_report("timing blocks\n   original vs compressed\n| table |")

    monkeypatch.setattr(quickstart, "fresh_run", fresh_run)
    out = tmp_path / "quickstart.md"
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--runs", "2", "--out", str(out)])
    quickstart.main()
    text = out.read_text()
    assert re.search(r"Command \(README\): `pip install -c constraints.txt [^`]+`", text)
    assert text.count("| merge 5; keep 71% | 1.90x (first predicted +4%) | 1.87x (1.55-2.10) | 79.4% -> 80.2% (+0.8 pt) "
                      "| 408 s |") == 2
    assert "```text\n   original vs compressed\n| table |\n```" in text  # what run 1 printed, from its table on
    assert "Headline: 1.87x, 1.87x; top-1 +0.8 to +0.8 pt" in text


def test_every_arm_of_the_proof_gets_the_same_recipe(tmp_path, monkeypatch):
    out = tiny_proof(tmp_path, monkeypatch, "--distill", "both", "--token-distill", "0.5", "--score-lr", "5e-3",
                     "--merge-lr", "1e-2", "--temperature", "2")
    control, compressed, rates = [], [], []
    real_phase, real_compress = proof.run_phase, proof.compress
    monkeypatch.setattr(proof, "run_phase", lambda student, teacher, batches, cfg, *a, **k: control.append(
        (cfg.distill, cfg.token_weight, cfg.temperature)) or real_phase(student, teacher, batches, cfg, *a, **k))
    monkeypatch.setattr(proof, "compress", lambda cfg, *a, **k: compressed.append(
        (cfg.distill, cfg.token_distill, cfg.temperature)) or rates.append((cfg.score_lr, cfg.merge_lr))
        or real_compress(cfg, *a, **k))
    proof.main()
    assert control == compressed == [("both", 0.5, 2.0)] and rates == [(5e-3, 1e-2)]  # (the control has no scores)
    said = out.with_suffix(".md").read_text()
    assert ("distillation (both at temperature 2) from the reference, tokens on the merged grid x 0.5 plus "
            "cross-entropy, schedule phases, score lr 0.005, merge-weight lr 0.01") in said


def test_recipe_rates_trains_one_plan_per_setting_and_reads_the_merge_weights(tmp_path, monkeypatch):
    from benchmarks import recipe_rates

    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    out, plan = tmp_path / "rates.md", tmp_path / "plan.json"
    plan.write_text(json.dumps({"schedule": [[1, "w"], [2, "h"]], "keep": 0.8, "predicted_speedup": 1.5}))
    monkeypatch.setattr(sys, "argv", [
        "recipe_rates.py", "--model", str(reference), "--data", str(data), "--val-data", str(data / "val"),
        "--target", "1.3", "--calib-steps", "2", "--finetune-steps", "2", "--latency-cache", str(tmp_path / "lat"),
        "--plan", str(plan), "--settings", "2e-2:-", "2e-2:0.5", "--out", str(out)])
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))
    recipe_rates.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| scores")]
    assert [row.split(" | ")[0] for row in rows] == ["| scores 0.02, merge weights = weights", "| scores 0.02, merge "
                                                                                              "weights 0.5"]
    alphas = [[float(a) for a in row.split(" | ")[5].split(", ")] for row in rows]
    assert [len(a) for a in alphas] == [2, 2]  # one per merge step of the plan
    # at lr 0.5 for four steps the merge weights move off their start (1.0) further than at the weights' 1e-4
    assert max(abs(a - 1) for a in alphas[1]) > max(abs(a - 1) for a in alphas[0])
    assert recipe_rates.parse_setting("5e-3:-") == (5e-3, None)
    with pytest.raises(CaitError, match="SCORE_LR:MERGE_LR"):
        recipe_rates.parse_setting("fast")


def test_plan_choice_trains_each_schedule_at_the_budget_the_planner_would_solve(tmp_path, monkeypatch):
    from benchmarks import plan_choice
    from cait_cli.pipeline.planning.plan import PlanConfig, SpeedModel

    reference = save_tiny_timm_dir(tmp_path / "ref", tiny_vit(**ARGS), ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    out = tmp_path / "choice.md"
    monkeypatch.setattr(sys, "argv", [
        "plan_choice.py", "--model", str(reference), "--data", str(data), "--val-data", str(data / "val"),
        "--target", "1.3", "--calib-steps", "2", "--finetune-steps", "2", "--latency-cache", str(tmp_path / "lat"),
        "--merges", "1w", "none", "--out", str(out)])
    fake_table = lambda model, *a, **k: synthetic_table(model)  # noqa: E731
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", fake_table)
    monkeypatch.setattr(plan_choice, "calibrate_latency", fake_table)
    plan_choice.main()
    rows = {row.split(" | ")[0][2:]: row.split(" | ") for row in out.read_text().splitlines()
            if row.startswith(("| 1w", "| none"))}
    assert set(rows) == {"1w", "none"}
    speed = SpeedModel(tiny_vit(**ARGS), synthetic_table(tiny_vit(**ARGS)), plan_choice.CHANNEL_MULTIPLE)
    cfg = PlanConfig(1.3, multiple=plan_choice.CHANNEL_MULTIPLE)
    for name, schedule in (("1w", plan_choice.parse_merges("1w")), ("none", [])):
        keep = plan_choice.solved_keep(speed, schedule, cfg)
        assert rows[name][1] == f"{keep:.0%}"
        assert float(rows[name][2].rstrip("x")) >= 1.3  # the budget solved reaches the planner's aim
    assert rows["1w"][1] != rows["none"][1]  # merging leaves more channels for the same speed
    assert plan_choice.parse_merges("5w+10h") == [plan_choice.MergeStep(5, "w"), plan_choice.MergeStep(10, "h")]
    with pytest.raises(CaitError, match="--merges"):
        plan_choice.parse_merges("5x")


def test_plan_trials_start_from_the_planners_score_and_training_moves_it(tmp_path, monkeypatch):
    from benchmarks import plan_trials
    from cait_cli.pipeline.data.sources import collate_skipping, dataset_from, eval_transform, resolve_data_config
    from cait_cli.pipeline.planning.scoring import kl_score

    base = tiny_vit(**ARGS)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    data_cfg = resolve_data_config(base)
    batches = plan_trials.StepBatches(dataset_from(str(data / "train"), eval_transform(data_cfg)), 6, 0,
                                      collate_skipping)
    images = plan_trials.spread_images(dataset_from(str(data / "val"), eval_transform(data_cfg)), 6)
    schedule = plan_trials.parse_merges("1w")
    untrained = plan_trials.trial_kl(base, schedule, 0.5, batches, 0, 1e-3, images)
    # step 0 is what make_plan ranks by: the planner's own score of the plan
    planner = float(kl_score(base, lambda: images, plan_trials.CHANNEL_MULTIPLE)(schedule, 0.5).mean())
    assert untrained == pytest.approx(planner, rel=1e-4, abs=1e-6)
    trained = plan_trials.trial_kl(base, schedule, 0.5, batches, 6, 1e-3, images)
    # the trial trained the student (here the labels' cross-entropy pulls a random ViT off its original)
    assert trained != pytest.approx(untrained, rel=1e-2)
