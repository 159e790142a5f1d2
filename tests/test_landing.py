"""Landing rules that need no model: which attempt is kept, and where the next goal goes."""
from cait_cli.pipeline.planning.landing import Attempt, Bracket, choose
from cait_cli.pipeline.planning.plan import Plan

INNER, OUTER = (1.88, 2.01), (1.84, 2.05)  # 1.9x: LANDING_BAND and BAND


def attempts(*measured):
    return [Attempt(Plan(schedule=[], keep=1.0 - i / 10, predicted_speedup=1.9), goal=1.9, predicted=1.9, measured=m)
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


def test_the_next_goal_stays_inside_the_bracket():
    bracket = Bracket()
    bracket.record(1.9, 1.5, low=1.88)  # too slow
    bracket.record(2.4, 2.3, low=1.88)  # too fast
    goal = bracket.next_goal(2.4, 2.3, aim=1.94)
    assert 1.9 < goal < 2.4
