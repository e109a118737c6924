"""Wait estimates from hold times (gpuhub_spawner/core/waits.py): the pure rule, by table."""

from __future__ import annotations

import math

import pytest

from gpuhub_spawner.core.waits import MIN_HOLDS, Estimate, Holding, Keep, estimate, quantile, wait_text

MIN = 60.0
#: ten past holds: 10, 20, ..., 100 minutes (quartiles 32.5 and 77.5 minutes)
PAST = [m * 10 * MIN for m in range(1, 11)]


def test_quantiles_interpolate():
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    assert quantile([10.0, 20.0], 0.5) == 15.0
    assert quantile([7.0], 0.75) == 7.0


@pytest.mark.parametrize("position, holdings, past, expected", [
    # one unit, held 0 s: the next frees between the quartiles of all past holds
    (1, [Holding(0)], PAST, (32.5 * MIN, 77.5 * MIN)),
    # held 50 min already: only holds longer than 50 min count, less the 50 min done
    (1, [Holding(50 * MIN)], PAST, (quantile([10, 20, 30, 40, 50], 0.25) * MIN, quantile([10, 20, 30, 40, 50], 0.75) * MIN)),
    # two units: the first in line gets the earlier release
    (1, [Holding(0), Holding(50 * MIN)], PAST, (20 * MIN, 40 * MIN)),
    # #2 of two units: the later release
    (2, [Holding(0), Holding(50 * MIN)], PAST, (32.5 * MIN, 77.5 * MIN)),
    # #2 on one unit: the unit #1 takes comes free again after a whole typical hold
    (2, [Holding(0)], PAST, (65 * MIN, 155 * MIN)),
    # an announced cull in 5 minutes bounds both ends
    (1, [Holding(0, cull_in=5 * MIN)], PAST, (5 * MIN, 5 * MIN)),
    # a cull bounds a holder older than every past hold, which otherwise gives no end
    (1, [Holding(200 * MIN, cull_in=3 * MIN)], PAST, (3 * MIN, 3 * MIN)),
])
def test_the_range_follows_the_rule(position, holdings, past, expected):
    est = estimate(position, holdings, past)
    assert est is not None and est.holds == len(past)
    assert (est.low, est.high) == pytest.approx(expected)


def test_no_basis_no_range():
    few = PAST[: MIN_HOLDS - 1]
    assert estimate(1, [Holding(0)], few) is None  # too few past holds
    assert estimate(1, [], PAST) is None  # nobody holds: nothing to wait for
    assert estimate(0, [Holding(0)], PAST) is None
    # older than every past hold, no cull announced: no honest range
    assert estimate(1, [Holding(500 * MIN)], PAST) is None
    # with too little history a cull still bounds the wait for the unit it frees
    assert estimate(1, [Holding(0, cull_in=120)], few) == Estimate(120, 120, len(few), culled=True)
    assert estimate(2, [Holding(0, cull_in=120)], few) is None  # the one after that: unknown


def test_a_holder_past_all_history_leaves_only_a_lower_bound_for_the_places_behind():
    est = estimate(2, [Holding(0), Holding(500 * MIN)], PAST)
    assert est.low == pytest.approx(32.5 * MIN + 32.5 * MIN) and est.high == pytest.approx(155 * MIN)
    est = estimate(3, [Holding(500 * MIN), Holding(400 * MIN)], PAST, )
    assert est is None


@pytest.mark.parametrize("est, max_wait, text", [
    (Estimate(3 * MIN, 6 * MIN, 12), 300, "Likely wait: about 3–6 minutes (from 12 recent servers' hold times)."),
    (Estimate(20, 45, 8), 300, "Likely wait: about 20–50 seconds (from 8 recent servers' hold times)."),
    (Estimate(2, 45, 8), 300, "Likely wait: up to 50 seconds (from 8 recent servers' hold times)."),
    (Estimate(5 * MIN, 5 * MIN, 2), 600, "Likely wait: about 5 minutes (from announced culls)."),
    (Estimate(20 * MIN, None, 9), 300,
     "Likely wait: more than 20 minutes (from 9 recent servers' hold times). That is past your time limit"
     " in line: a CPU-only server, or trying later, may suit you better."),
    (None, 300, "No wait estimate yet: too few servers of this kind have finished for the hub to tell."),
])
def test_the_words(est, max_wait, text):
    assert wait_text(est, max_wait) == text


INF = math.inf


@pytest.mark.parametrize("position, holdings, keeps, free, expected, kept", [
    # a unit free now but kept for a reservation's grace period (4 more minutes): lent then
    (1, [], [Keep(1, -6 * MIN, 4 * MIN)], 1, (4 * MIN, 4 * MIN), True),
    # free units nobody keeps are not waited for (the place waits for another reason): no basis
    (1, [], [], 1, None, False),
    # a unit that frees while a guarantee keeps it never comes to the place: the next one does
    (1, [Holding(0, cull_in=2 * MIN), Holding(0, cull_in=9 * MIN)], [Keep(1, 0, INF)], 0, (9 * MIN, 9 * MIN), True),
    # the kept unit comes back when the grace period ends, before the other holder's cull
    (1, [Holding(0, cull_in=2 * MIN), Holding(0, cull_in=9 * MIN)], [Keep(1, 0, 5 * MIN)], 0, (5 * MIN, 5 * MIN), True),
    # a window that opens in 3 min keeps what frees in it (the 4-min cull) until its grace ends at 13
    (1, [Holding(0, cull_in=4 * MIN), Holding(0, cull_in=20 * MIN)], [Keep(1, 3 * MIN, 13 * MIN)], 0,
     (13 * MIN, 13 * MIN), True),
    # ... but not what frees before it opens
    (1, [Holding(0, cull_in=2 * MIN)], [Keep(1, 3 * MIN, 13 * MIN)], 0, (2 * MIN, 2 * MIN), False),
    # with hold times: the unit the guarantee keeps is skipped, the later release is the place's
    (1, [Holding(0), Holding(50 * MIN)], [Keep(1, 0, INF)], 0, (32.5 * MIN, 77.5 * MIN), True),
])
def test_units_kept_for_other_groups_lengthen_the_wait(position, holdings, keeps, free, expected, kept):
    few = PAST[: MIN_HOLDS - 1]
    for past in (few, PAST) if all(h.cull_in is not None for h in holdings) else (PAST,):
        est = estimate(position, holdings, past, keeps, free)
        if expected is None:
            assert est is None
            continue
        assert est is not None and (est.low, est.high) == pytest.approx(expected), (past, est)
        assert est.kept is kept  # the sentence names what is kept only when a keep held a unit back


def test_the_words_name_what_is_kept():
    assert wait_text(Estimate(9 * MIN, 9 * MIN, 0, kept=True), 600) == (
        "Likely wait: about 9 minutes (from the units kept for other groups' reservations and guaranteed shares).")
    assert wait_text(Estimate(4 * MIN, 4 * MIN, 0, kept=True, culled=True), 600) == (
        "Likely wait: about 4 minutes (from announced culls and the units kept for other groups' reservations "
        "and guaranteed shares).")
    assert wait_text(Estimate(3 * MIN, 6 * MIN, 12, kept=True), 600) == (
        "Likely wait: about 3–6 minutes (from 12 recent servers' hold times and the units kept for other "
        "groups' reservations and guaranteed shares).")


def test_bad_history_values_are_ignored():
    est = estimate(1, [Holding(0)], [*PAST, -5.0, 0.0, math.inf, math.nan])
    assert est.holds == len(PAST)
