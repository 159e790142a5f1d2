"""The planner: latency tables measured and cached, plans that reach the target."""
import copy
import re

import pytest
import torch
from support import mac_speeds, synthetic_table

import cait_cli.pipeline.planning.latency as latency
from cait_cli.errors import CaitError
from cait_cli.method.atme import MergeStep, grid_after
from cait_cli.pipeline.planning.latency import calibrate_latency
from cait_cli.pipeline.planning.plan import (
    PlanConfig,
    SpeedModel,
    candidate_schedules,
    make_plan,
    shortlist_by_budget,
    within_noise,
)


@pytest.fixture
def table(make_vit, tmp_path):
    return calibrate_latency(make_vit(), torch.device("cpu"), batch=4, cache_dir=tmp_path, repeats=2)


def test_latency_table_is_monotone_and_cached(make_vit, table, tmp_path, monkeypatch):
    for grid in (table.attn_ms, table.mlp_ms):
        assert all(a <= b for row in grid for a, b in zip(row, row[1:]))
        assert all(a <= b for col in zip(*grid) for a, b in zip(col, col[1:]))
    assert table.tokens[-1] == 65 and table.fixed_ms > 0

    def no_measuring(*args, **kwargs):
        raise AssertionError("cached table was measured again")

    monkeypatch.setattr(latency, "_measure_table", no_measuring)
    again = calibrate_latency(make_vit(), torch.device("cpu"), batch=4, cache_dir=tmp_path)
    assert again == table


def test_a_table_timed_under_autocast_is_cached_apart(make_vit):
    # GPU measurements run in bf16 (compress's --amp): a table timed in fp32 must not stand in for them
    model, cpu = make_vit(), torch.device("cpu")
    assert latency.table_key(model, cpu, 4, torch.float32, 8) != latency.table_key(model, cpu, 4, torch.float32, 8,
                                                                                    amp=True)


def test_whole_model_fit_takes_the_median_scale_so_one_disturbed_model_cannot_move_it():
    halves = {"a": 4.0, "b": 2.0, "c": 1.0, "d": 3.0, "e": 0.5}
    whole_ms = {name: 0.1 + 1.5 * h for name, h in halves.items()}  # fixed 0.1 ms + halves x 1.5, exactly
    assert latency.median_scale(halves, whole_ms, 0.1) == pytest.approx(1.5)
    whole_ms["c"] *= 3  # the machine was busy while one model ran
    assert latency.median_scale(halves, whole_ms, 0.1) == pytest.approx(1.5)
    # nothing positive to go on (a model measured faster than its fixed parts): the halves as timed
    assert latency.median_scale({"a": 1.0}, {"a": 0.05}, 0.1) == 1.0


def test_whole_model_line_recovers_scale_and_overhead_and_shrugs_off_one_disturbed_model():
    halves = {"a": 4.0, "b": 2.0, "c": 1.0, "d": 3.0, "e": 0.5}
    whole_ms = {name: 0.1 + 0.3 + 1.5 * h for name, h in halves.items()}  # fixed 0.1, overhead 0.3, scale 1.5
    assert latency.robust_line(halves, whole_ms, 0.1) == (pytest.approx(1.5), pytest.approx(0.3))
    whole_ms["c"] *= 3
    assert latency.robust_line(halves, whole_ms, 0.1) == (pytest.approx(1.5), pytest.approx(0.3))
    # bigger models relatively cheaper would mean a negative overhead: the scale alone instead
    bent = {name: 0.1 + 1.5 * h + 0.2 * h * h for name, h in halves.items()}
    scale, overhead = latency.robust_line(halves, bent, 0.1)
    assert overhead == 0.0 and scale == latency.median_scale(halves, bent, 0.1)


def test_fit_models_timed_twice_pool_their_paired_repeats():
    shapes = {"a": ([], [], []), "b": ([], [], [])}
    # images/s per repeat; the original's at 1.0 and 0.5, so each model's paired speedups are 2, 1.2, 2 ...
    first = latency.FitModels(shapes, {"a": [2.0, 1.2, 2.0], "b": [3.0, 3.0, 3.0]}, [1.0, 1.0, 1.0], baseline_ms=10.0)
    again = latency.FitModels(shapes, {"a": [1.0, 1.0, 1.0], "b": [1.5, 1.0, 1.5]}, [0.5, 0.5, 0.5], baseline_ms=12.0)
    both = first.pooled(again)
    assert both.rates == {"a": [2.0, 1.2, 2.0, 1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.0, 1.5, 1.0, 1.5]}
    assert both.baseline_rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]  # still paired repeat by repeat
    assert both.baseline_ms == 11.0
    assert both.whole_ms == {"a": pytest.approx(11.0 / 2.0), "b": pytest.approx(11.0 / 3.0)}


def _fit_models_of(model, clean, monkeypatch):
    """The fit models' shapes as compress builds them, their times made from `clean` (scale 1.2,
    overhead 0.1 ms) in place of a measurement."""
    monkeypatch.setattr(latency, "measure_throughput", mac_speeds)
    whole = latency._time_fit_models(clean, model, 4, 1, torch.device("cpu"), torch.float32, 2, False, "eager")
    whole.baseline_rates = [1.0]
    whole.rates = {name: [whole.baseline_ms / (clean.fixed_ms + 0.1 + 1.2 * h)]
                   for name, h in whole.halves(clean).items()}
    return whole


@pytest.mark.parametrize("disturbed_first", [True, False])
def test_a_fit_that_misses_a_whole_model_times_the_block_halves_again(make_vit, tmp_path, monkeypatch,
                                                                       disturbed_first):
    model = make_vit()
    clean = synthetic_table(model)
    busy = copy.deepcopy(clean)  # the machine busy while the merged token counts were timed
    for grid in (busy.attn_ms, busy.mlp_ms):
        grid[:-1] = [[2 * ms for ms in row] for row in grid[:-1]]
    whole = _fit_models_of(model, clean, monkeypatch)
    timings = [busy, copy.deepcopy(clean)] if disturbed_first else [copy.deepcopy(clean)]
    monkeypatch.setattr(latency, "_block_table", lambda *args: timings.pop(0))
    fit_timings = []
    monkeypatch.setattr(latency, "_time_fit_models", lambda *args: fit_timings.append(1) or whole)
    if disturbed_first:  # the busy table alone misses some fit model by more than RETIME_ERROR
        alone = copy.deepcopy(busy)
        latency.fit_table(alone, whole)
        assert alone.fit_error > latency.RETIME_ERROR
    table = calibrate_latency(model, torch.device("cpu"), batch=4, cache_dir=tmp_path)
    assert timings == [] and table.block_timings == (2 if disturbed_first else 1)
    assert len(fit_timings) == table.block_timings  # the fit models are timed again with the halves
    assert table.attn_ms == clean.attn_ms and table.mlp_ms == clean.mlp_ms  # every cell the faster timing
    assert table.fit_error == pytest.approx(0.0, abs=1e-9)
    assert (table.scale, table.overhead_ms) == (pytest.approx(1.2), pytest.approx(0.1))


def test_the_fitted_table_predicts_its_whole_models_in_order(make_vit, table):
    # more channels and more tokens never predict a faster model
    speed = SpeedModel(make_vit(), table)
    assert table.scale > 0
    assert speed.latency([], 1.0) >= speed.latency([], 0.5)


def test_candidate_schedules_are_valid():
    schedules = candidate_schedules(12, (14, 14))
    assert [] in schedules and len(schedules) > 20
    for schedule in schedules:
        blocks = [s.block for s in schedule]
        assert blocks == sorted(set(blocks)) and all(0 < b < 12 for b in blocks)
        assert min(grid_after((14, 14), [s.axis for s in schedule])) >= 1


def test_speed_model_predicts_from_the_table(make_vit):
    model = make_vit()
    speed = SpeedModel(model, synthetic_table(model))
    assert speed.speedup([], 1.0) == pytest.approx(1.0)
    # by hand: block halves at half width and full tokens cost half, so the model is twice as fast
    assert speed.speedup_of([], [(8, 96)] * 4) == pytest.approx(2.0)
    speeds = [speed.speedup([], keep) for keep in (1.0, 0.8, 0.6, 0.4)]
    assert speeds == sorted(speeds) and speeds[-1] > 1.5
    keep = speed.solve_keep([], 1.6, 0.25)
    assert speed.speedup([], keep) == pytest.approx(1.6, rel=0.02)


def test_speed_model_follows_the_widths_the_budget_allocates(make_vit):
    model = make_vit()
    speed = SpeedModel(model, synthetic_table(model), multiple=4)
    widths = speed.widths([], 0.5)
    assert all(attn % 4 == 0 and mlp % 4 == 0 for attn, mlp in widths)
    assert speed.speedup([], 0.5) == pytest.approx(speed.speedup_of([], widths))


def test_plan_lands_between_the_aim_and_the_ceiling(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    plan = make_plan(model, table, PlanConfig(target=2.0))
    assert 2.0 * 1.02 - 1e-6 <= plan.predicted_speedup <= 2.0 * 1.08
    assert len(plan.tokens) == 4 and 0.25 <= plan.keep <= 1.0


def test_a_plan_that_overshoots_is_never_preferred(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    speed = SpeedModel(model, table)

    def prefer_fast(schedule, keep):  # a score that would pick the fastest plan if allowed to
        return -speed.speedup(schedule, keep)

    plan = make_plan(model, table, PlanConfig(target=1.3), score=prefer_fast)
    assert plan.predicted_speedup <= 1.3 * 1.08
    assert max(speed.speedup(s, 1.0) for s in candidate_schedules(4, (8, 8))) > 1.3 * 1.08


def test_plan_uses_the_score_to_choose(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    seen = []

    def prefer_fewest_merges(schedule, keep):
        seen.append((tuple(schedule), keep))
        return len(schedule)

    plan = make_plan(model, table, PlanConfig(target=1.5), score=prefer_fewest_merges)
    assert len(seen) > 1 and len(plan.schedule) == min(len(s) for s, _ in seen)


def test_plans_within_the_scores_noise_tie_and_the_latest_merging_wins(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    noise = torch.randn(64, generator=torch.Generator().manual_seed(0))

    def earliest_merge_best_by(gap):
        """Per-image scores: the earlier a plan's first merge, the lower (better) by `gap`, plus shared
        per-image noise, and its own noise of 0.05."""
        def score(schedule, keep):
            first = schedule[0].block if schedule else len(model.blocks)
            own = torch.randn(64, generator=torch.Generator().manual_seed(7 * first + len(schedule)))
            return 1.0 + gap * first + noise + 0.05 * own
        return score

    def first_merge(plan):
        return plan.schedule[0].block if plan.schedule else len(model.blocks)

    cfg = PlanConfig(target=1.5)
    clear = make_plan(model, table, cfg, score=earliest_merge_best_by(1.0))  # far beyond the noise
    tied = make_plan(model, table, cfg, score=earliest_merge_best_by(1e-4))  # far within it
    assert first_merge(clear) < first_merge(tied)
    assert tied.score == pytest.approx(float(earliest_merge_best_by(1e-4)(tied.schedule, tied.keep).mean()))


def test_within_noise_pairs_the_images_and_a_single_value_only_ties_with_the_best():
    best = torch.linspace(0, 1, 32, dtype=torch.float64)
    jitter = 0.01 * torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert within_noise(best, best)
    assert within_noise(best + jitter, best)  # a paired difference of zero mean: a tie
    assert not within_noise(best + 0.05 + jitter, best)  # 0.05 is many standard errors of the difference
    assert within_noise(torch.tensor([0.3]), torch.tensor([0.3])) and not within_noise(torch.tensor([0.31]),
                                                                                       torch.tensor([0.3]))


def test_impossible_targets_are_refused_with_the_maximum(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    with pytest.raises(CaitError, match="at least 1.0"):
        make_plan(model, table, PlanConfig(target=0.5))
    with pytest.raises(CaitError, match=r"beyond .*about [0-9.]+x at most") as refused:
        make_plan(model, table, PlanConfig(target=1000.0))
    best = float(re.search(r"about ([0-9.]+)x at most", str(refused.value)).group(1))
    reachable = best / PlanConfig.margin * 0.98  # a plan aims a margin above its target
    assert make_plan(model, table, PlanConfig(target=reachable)).predicted_speedup >= reachable


def test_ablation_methods_use_one_part_only(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    atme = make_plan(model, table, PlanConfig.for_method("atme", 1.3))
    assert atme.keep == 1.0 and atme.schedule and atme.predicted_speedup >= 1.3 * 1.02 - 1e-6
    cdcp = make_plan(model, table, PlanConfig.for_method("cdcp", 1.3))
    assert cdcp.schedule == [] and cdcp.keep < 1.0
    assert cdcp.predicted_speedup == pytest.approx(1.3 * 1.02, rel=0.02)
    with pytest.raises(CaitError, match="--method"):
        PlanConfig.for_method("tome", 1.3)


def test_max_keep_makes_cdcp_prune_and_the_schedule_merge_less(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    free = make_plan(model, table, PlanConfig(target=1.5))
    forced = make_plan(model, table, PlanConfig(target=1.5, max_keep=0.7))
    assert free.keep > 0.7 and forced.keep <= 0.7
    assert len(forced.schedule) <= len(free.schedule)
    assert 1.5 * 1.02 - 1e-6 <= forced.predicted_speedup <= 1.5 * 1.08


def test_min_keep_caps_the_pruning_and_the_schedule_merges_more(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    free = make_plan(model, table, PlanConfig(target=1.5, max_keep=0.7))
    held = make_plan(model, table, PlanConfig(target=1.5, min_keep=0.9))
    assert free.keep <= 0.7 and held.keep >= 0.9
    assert len(held.schedule) >= len(free.schedule)
    with pytest.raises(CaitError, match="keeping at least 90% of the channels"):
        make_plan(model, table, PlanConfig.for_method("cdcp", 1.5, min_keep=0.9))


def test_shortlist_spreads_over_budgets_and_puts_late_merges_first():
    late, early, two = [MergeStep(9, "w")], [MergeStep(2, "w")], [MergeStep(3, "w"), MergeStep(9, "h")]
    merge_only = [(1.95, 1.0, early), (1.96, 1.0, two), (1.94, 1.0, late), (1.95, 0.97, two)]
    pruning = [(1.95, 0.72, early), (1.94, 0.68, late), (1.95, 0.51, [])]
    picked = shortlist_by_budget(merge_only + pruning, 6)
    keeps = [keep for _, keep, _ in picked]
    assert keeps == [1.0, 0.97, 0.72, 0.68, 0.51, 1.0]  # one from each 10% band in turn, least pruning first
    assert picked[0][2] == late  # within a band: fewer, then later merges
    assert len(shortlist_by_budget(merge_only + pruning, 100)) == 7


def test_score_can_choose_pruning_when_merging_alone_lands(make_vit):
    model = make_vit()
    table = synthetic_table(model)
    speed = SpeedModel(model, table)
    target = 1.55
    merge_only = [s for s in candidate_schedules(4, (8, 8)) if speed.solve_keep(s, target * 1.02, 0.25) == 1.0
                  and speed.speedup(s, 1.0) <= target * 1.08]
    assert merge_only  # the test needs a target that merging alone lands on
    unscored = make_plan(model, table, PlanConfig(target=target))
    assert unscored.keep == 1.0  # without data: prune the fewest channels

    def prefer_pruning(schedule, keep):
        return keep

    scored = make_plan(model, table, PlanConfig(target=target), score=prefer_pruning)
    assert scored.keep < 0.9 and target * 1.02 - 1e-6 <= scored.predicted_speedup <= target * 1.08


def test_kl_score_is_zero_for_the_original_and_computed_once_per_plan(make_vit, monkeypatch):
    import cait_cli.pipeline.planning.scoring as scoring
    model = make_vit().eval()
    built = []

    def counting_variant(*args, **kwargs):
        built.append(args[1:])
        return compressed_variant(*args, **kwargs)

    compressed_variant = scoring.compressed_variant
    monkeypatch.setattr(scoring, "compressed_variant", counting_variant)
    score = scoring.kl_score(model, lambda: torch.randn(4, 3, 32, 32), multiple=1)
    original = score([], 1.0)
    assert original.shape == (4,) and float(original.abs().max()) == pytest.approx(0.0, abs=1e-6)  # one per image
    merged = [MergeStep(1, "w")]
    first = score(merged, 0.6)
    assert float(first.mean()) > 0 and score(list(merged), 0.6) is first
    assert len(built) == 2

