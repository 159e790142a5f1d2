"""Landing rules that need no timing: which attempt is kept, and how measurements correct the re-plan."""
from support import synthetic_table, tiny_vit

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.model import patch_vit
from cait_cli.pipeline.planning.landing import Attempt, choose
from cait_cli.pipeline.planning.plan import Plan, PlanConfig, SpeedModel, make_plan

INNER, OUTER = (1.88, 2.01), (1.84, 2.05)  # 1.9x: LANDING_BAND and BAND


def attempts(*measured):
    return [Attempt(Plan(schedule=[], keep=1.0 - i / 10, predicted_speedup=1.9), predicted=1.9, measured=m)
            for i, m in enumerate(measured)]


def test_an_attempt_in_the_inner_band_beats_one_near_the_edge():
    tried = attempts(2.04, 1.95, 1.86)
    assert choose(tried, INNER, OUTER) is tried[1]


def test_without_an_inner_landing_the_one_nearest_the_centre_of_the_band_is_kept():
    tried = attempts(2.04, 1.87, 1.70)
    assert choose(tried, INNER, OUTER) is tried[1]  # 1.87 is nearer the centre (1.94) than 2.04 is


def test_outside_the_band_the_slowest_that_reaches_it_else_the_fastest():
    tried = attempts(2.60, 2.30, 1.50)
    assert choose(tried, INNER, OUTER) is tried[1]
    tried = attempts(1.50, 1.70)
    assert choose(tried, INNER, OUTER) is tried[1]


def planner():
    """A tiny ViT (depth 4, 8x8 grid) on a synthetic table: merging after block 1 is predicted 1.44x,
    after blocks 2 and 3 1.28x, and nothing at full width between them."""
    model = patch_vit(tiny_vit())
    return model, synthetic_table(model)


def test_measurements_correct_the_plans_near_them():
    model, table = planner()
    speed = SpeedModel(model, table)
    late, early = (alternating_schedule(b, speed.grid) for b in ([2, 3], [1]))
    raw_late, raw_early = speed.speedup(late, 1.0), speed.speedup(early, 1.0)
    speed.observe(late, 1.0, raw_late, raw_late * 0.9)
    assert abs(speed.speedup(late, 1.0) - raw_late * 0.9) < 1e-9  # the measured plan: as measured
    assert speed.speedup(late, 0.8) > raw_late * 0.9  # pruning on top of it: faster than measured
    assert abs(speed.speedup(early, 1.0) - raw_early * 0.9) < 1e-9  # the only measurement speaks for all
    speed.observe(early, 1.0, raw_early, raw_early)
    assert abs(speed.speedup(early, 1.0) - raw_early) < 1e-9 and abs(speed.speedup(late, 1.0) - raw_late * 0.9) < 1e-9


def test_the_corrected_replan_proposes_the_plan_between_two_measured_ones():
    """The case of the issue: the faster merge schedule measured above the band, the slower one
    below it. The table's own predictions land neither, so re-planning on them proposed the
    measured plans again; corrected by the measurements, the planner prunes channels on top of
    the slower schedule (or finds another schedule) predicted inside the band."""
    model, table = planner()
    target = 1.3  # band 1.26-1.40; aim 1.33
    cfg = PlanConfig(target, margin=1.02)
    speed = SpeedModel(model, table)
    early, late = (alternating_schedule(b, speed.grid) for b in ([1], [2, 3]))
    speed.observe(early, 1.0, speed.speedup(early, 1.0), 1.42)  # 1.44x predicted: above the band's 1.40
    speed.observe(late, 1.0, speed.speedup(late, 1.0), 1.22)  # 1.28x predicted: below 1.26
    plan = make_plan(model, table, cfg, speed=speed)
    assert (plan.schedule, plan.keep) not in [(early, 1.0), (late, 1.0)]
    assert target * 1.02 <= plan.predicted_speedup <= target * 1.08
    if plan.schedule == late:
        assert plan.keep < 1.0  # the fine knob: a little pruning on the slower schedule
