"""The GPU Hub page's charts (hub_services/admin/charts.py): series from ledger intervals, and SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest

from gpuhub_spawner.core.reservations import parse_reservations
from gpuhub_spawner.storage.ledger import Interval, WaitRecord
from hub_services.admin.charts import (
    NO_GROUP,
    bars_svg,
    estimate_quality,
    held_over_time,
    hours_by_group,
    reservation_use,
    steps_svg,
    waiting_over_time,
)

DAY = datetime(2026, 11, 26, tzinfo=timezone.utc)
NOW = DAY + timedelta(hours=12)


def at(h: float) -> datetime:
    return DAY + timedelta(hours=h)


def iv(user: str, pool: str, start: float, end: float | None) -> Interval:
    return Interval(user, "", f"u-{user}", pool, "n1", f"h-{user}-{start}", at(start), None if end is None else at(end))


@pytest.mark.parametrize(
    "intervals, expected",
    [
        ([], {}),
        ([iv("a", "gpu", 9, 10)], {"gpu": [(0, 0), (9, 1), (10, 0), (12, 0)]}),
        ([iv("a", "gpu", 9, 11), iv("b", "gpu", 10, None)], {"gpu": [(0, 0), (9, 1), (10, 2), (11, 1), (12, 1)]}),
        ([iv("a", "gpu", -3, 1)], {"gpu": [(0, 0), (0, 1), (1, 0), (12, 0)]}),  # began yesterday: from midnight
        ([iv("a", "gpu", 9, 10), iv("b", "gpu", 10, 11)], {"gpu": [(0, 0), (9, 1), (10, 1), (11, 0), (12, 0)]}),
        ([iv("a", "gpu", 9, 10), iv("m", "mig-1g.10gb", 8, None)],
         {"gpu": [(0, 0), (9, 1), (10, 0), (12, 0)], "mig-1g.10gb": [(0, 0), (8, 1), (12, 1)]}),
        ([iv("a", "gpu", -5, -4)], {}),  # ended before the day
    ],
    ids=["none", "one", "overlap-and-open", "from-yesterday", "hand-over", "two-pools", "before"],
)
def test_units_held_over_the_day(intervals, expected):
    series = held_over_time(intervals, DAY, NOW)
    got = {s.pool: [((t - DAY).total_seconds() / 3600, n) for t, n in s.points] for s in series}
    assert got == expected


def test_gpu_hours_by_group_count_a_user_in_each_of_their_groups():
    intervals = [iv("a", "gpu", 9, 11), iv("b", "gpu", 10, None), iv("c", "gpu", 8, 9)]
    groups = {"a": ["acme:gpu", "course"], "b": ["course"]}
    assert hours_by_group(intervals, groups, DAY, NOW) == {"course": 4.0, "acme:gpu": 2.0, NO_GROUP: 1.0}


def test_svg_is_well_formed_and_escapes_names():
    series = held_over_time([iv("a", "<b>pool</b>", 9, None)], DAY, NOW)
    for svg in (steps_svg(series, DAY, NOW, "held & such"),
                bars_svg({"<script>alert(1)</script>": 2.5, "course": 1.0}, "by group")):
        root = ET.fromstring(svg)  # parses: every name was escaped
        assert root.tag.endswith("svg")
        assert "<script>" not in svg and "<b>" not in svg
    texts = [t.text for t in ET.fromstring(bars_svg({"course": 1.25}, "x")).iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["course", "1.2 GPU-hours"]


def test_empty_charts_say_so():
    assert "No GPU unit was held" in steps_svg([], DAY, NOW, "x")
    assert "No GPU time was used" in bars_svg({}, "x")


def wt(user: str, start: float, end: float, outcome: str = "unit", low: float | None = None,
       high: float | None = None, pool: str = "gpu") -> WaitRecord:
    return WaitRecord(user, "", pool, at(start), at(end), outcome, 1, low, high, 10 if low is not None else 0)


def test_people_waiting_over_the_day_from_the_finished_waits():
    waits = [wt("a", 9, 10), wt("b", 9.5, 10.5, "refused"), wt("c", -2, 0.5, "cancelled")]
    series = waiting_over_time(waits, DAY, NOW)
    got = {s.pool: [((t - DAY).total_seconds() / 3600, n) for t, n in s.points] for s in series}
    assert got == {"gpu": [(0, 0), (0, 1), (0.5, 0), (9, 1), (9.5, 2), (10, 1), (10.5, 0), (12, 0)]}
    svg = steps_svg(series, DAY, NOW, "waiting", "waiting", "Nobody waited.")
    assert "at most 2 waiting" in svg and "Nobody waited." in steps_svg([], DAY, NOW, "x", "waiting", "Nobody waited.")


def test_estimate_quality_counts_hits_and_measures_misses():
    hour = 3600.0
    waits = [
        wt("in", 9, 10, low=0.5 * hour, high=2 * hour),       # waited 1 h, told 0.5-2 h: inside
        wt("short", 9, 9.25, low=0.5 * hour, high=1 * hour),  # waited 15 min: 15 min short of the range
        wt("long", 9, 12, low=1 * hour, high=2 * hour),       # waited 3 h: 1 h past it
        wt("open", 9, 11, low=1 * hour, high=None),           # "more than 1 h", waited 2 h: inside
        wt("none", 9, 10, "refused"),                         # no estimate told
        wt("gone", 9, 9.1, "cancelled", low=hour, high=hour),  # cancelled: not known how long it would wait
    ]
    assert estimate_quality(waits) == {"waits": 5, "no_estimate": 1, "told_a_range": 4, "inside": 2,
                                       "median_miss_s": 3600.0}
    assert estimate_quality([])["median_miss_s"] is None


# ---- reservation use -------------------------------------------------------------------------


def hours(series) -> dict[str, list[tuple[float, int]]]:
    return {s.pool: [((t - DAY).total_seconds() / 3600, n) for t, n in s.points] for s in series}


def test_reservation_use_sets_reserved_units_beside_what_members_held():
    # 2026-11-26 is a Thursday: the weekly window today, 09:00-11:00 UTC, and a one-off 10:00-14:00
    reserved = {
        "course": parse_reservations([{"pool": "gpu", "units": 2, "weekly": "Thu 09:00-11:00"},
                                      {"pool": "gpu", "units": 1, "start": "2026-11-26T10:00",
                                       "end": "2026-11-26T14:00"}], "course"),
        "lab": parse_reservations([{"pool": "gpu", "units": 1, "weekly": "Mon 09:00-11:00"}], "lab"),  # not today
    }
    groups = {"ann": ["course"], "bob": ["course", "lab"], "out": []}
    intervals = [iv("ann", "gpu", 9.5, 10.5), iv("bob", "gpu", 10, None), iv("out", "gpu", 8, None),
                 iv("ann", "mig", 9, 10)]  # another pool: not this reservation's
    ((title, series),) = reservation_use(reserved, groups, intervals, DAY, NOW)
    assert title == "course — gpu"
    assert hours(series) == {
        "reserved": [(0, 0), (9, 2), (10, 3), (11, 1), (12, 1)],  # the one-off runs past "now"
        "held by members": [(0, 0), (9.5, 1), (10, 2), (10.5, 1), (12, 1)],
    }
    svg = steps_svg(series, DAY, NOW, title, "units", "")
    ET.fromstring(svg)  # well formed
    assert "reserved (peak 3)" in svg and "held by members (peak 2)" in svg


def test_weekly_windows_in_a_time_zone_and_past_midnight():
    (r,) = parse_reservations([{"pool": "gpu", "units": 1, "weekly": "Wed 22:00-02:00", "tz": "Europe/Berlin"}])
    # Wednesday 22:00 Berlin (21:00 UTC) until Thursday 02:00 Berlin (01:00 UTC): it reaches into today
    ((start, end),) = r.windows(DAY, NOW)
    assert (start.astimezone(timezone.utc), end.astimezone(timezone.utc)) == (at(-3), at(1))
    assert r.windows(at(2), NOW) == []
