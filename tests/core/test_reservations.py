"""Reservations (core/reservations.py): windows, parsing, and the share they give a group, as tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpuhub_spawner.core.reservations import (
    ReservationError,
    as_stored,
    keeps_from,
    parse_reservations,
    with_reservations,
)
from gpuhub_spawner.core.shares import KEPT, PoolShares, Share
from gpuhub_spawner.core.waits import Keep

UTC = timezone.utc
WEEKLY = {"pool": "mig-1g.10gb", "units": 4, "weekly": "Tue 09:00-12:00"}


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment of the week of 2026-11-30 (Monday: day 0), UTC."""
    return datetime(2026, 11, 30, hour, minute, tzinfo=UTC) + timedelta(days=day)


@pytest.mark.parametrize("entry, moment, inside", [
    (WEEKLY, at(1, 9), True),
    (WEEKLY, at(1, 11, 59), True),
    (WEEKLY, at(1, 12), False),  # the end is not in the window
    (WEEKLY, at(1, 8, 59), False),
    (WEEKLY, at(2, 10), False),  # Wednesday
    ({**WEEKLY, "weekly": "Friday 22:00-02:00"}, at(5, 1), True),  # past midnight, into Saturday
    ({**WEEKLY, "weekly": "Fri 22:00-02:00"}, at(4, 23), True),
    ({**WEEKLY, "weekly": "Fri 22:00-02:00"}, at(5, 23), False),
    # 09:00 in Berlin is 08:00 UTC in December
    ({**WEEKLY, "tz": "Europe/Berlin"}, at(1, 8, 30), True),
    ({**WEEKLY, "tz": "Europe/Berlin"}, at(1, 11, 30), False),
    ({"pool": "gpu", "units": 1, "start": "2026-12-03T13:00", "end": "2026-12-03T17:00"}, at(3, 16), True),
    ({"pool": "gpu", "units": 1, "start": "2026-12-03T13:00+01:00", "end": "2026-12-03T17:00+01:00"}, at(3, 16), False),
])
def test_a_reservations_window(entry, moment, inside):
    (reservation,) = parse_reservations([entry], "group 'course'")
    assert (reservation.window(moment) is not None) == inside


@pytest.mark.parametrize("raw, says", [
    ("[{", "is not JSON"),
    (42, "must be a list of reservations"),
    ([{"pool": "gpu", "units": 0, "weekly": "Tue 09:00-12:00"}], "units 0 is not a whole number from 1"),
    ([{"pool": "", "units": 1, "weekly": "Tue 09:00-12:00"}], "pool must name a pool"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tuesday at nine"}], "is not a day and hours"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tue 25:00-26:00"}], "is not a day and hours"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tue 09:00-09:00"}], "is an empty window"),
    ([{"pool": "gpu", "units": 1}], "give either weekly, or start and end"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tue 09:00-10:00", "start": "2026-12-01T09:00"}], "give either"),
    ([{"pool": "gpu", "units": 1, "start": "2026-12-03T13:00", "end": "2026-12-03T12:00"}], "is not after start"),
    ([{"pool": "gpu", "units": 1, "start": "soon", "end": "later"}], "is not a date and time"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tue 09:00-10:00", "tz": "Mars/Olympus"}], "is not a time zone"),
    ([{"pool": "gpu", "units": 1, "weekly": "Tue 09:00-10:00", "room": 3}], "room is not pool, units"),
])
def test_a_reservation_that_cannot_be_used_is_refused_naming_the_group_and_entry(raw, says):
    with pytest.raises(ReservationError) as e:
        parse_reservations(raw, "group 'course'")
    assert says in str(e.value) and "course" in str(e.value), str(e.value)


def test_what_is_stored_reads_back_the_same():
    raw = [{**WEEKLY, "weekly": "tue 9:00-12:00", "tz": "Europe/Berlin"},
           {"pool": "gpu", "units": "2", "start": "2026-12-03T13:00", "end": "2026-12-03T17:00"}]
    parsed = parse_reservations(raw, "g")
    stored = as_stored(parsed)
    assert stored[0] == {"pool": "mig-1g.10gb", "units": 4, "tz": "Europe/Berlin", "weekly": "Tue 09:00-12:00"}
    assert parse_reservations(stored, "g") == parsed


GRACE = 600.0
POOL = "mig-1g.10gb"


@pytest.mark.parametrize("moment, share", [
    (at(1, 8, 59), None),  # before the window: nothing is held
    (at(1, 9, 5), Share(4, None, 4)),  # in the grace period: 4 kept (a guarantee)
    (at(1, 9, 10), Share(0, None, 4)),  # after it: lent (nothing kept), its members go first
    (at(1, 12), None),
])
def test_a_reservation_keeps_then_lends_then_ends(moment, share):
    reservations = {"course": parse_reservations([WEEKLY], "course")}
    got = with_reservations({}, reservations, POOL, moment, GRACE)
    assert got.get("course") == share
    assert with_reservations({}, reservations, "gpu", moment, GRACE) == {}  # another pool: untouched


def test_a_reservation_raises_a_share_and_its_burst_to_fit():
    shares = {"course": {POOL: Share(2, 3)}, "lab": {POOL: Share(1)}}
    reservations = {"course": parse_reservations([WEEKLY], "course")}
    during = with_reservations(shares, reservations, POOL, at(1, 9, 1), GRACE)
    assert during == {"course": Share(4, 4, 4), "lab": Share(1)}
    assert with_reservations(shares, reservations, POOL, at(2, 9, 1), GRACE) == {"course": Share(2, 3), "lab": Share(1)}


def test_in_the_window_members_take_reserved_units_an_outsider_does_not_until_they_are_lent():
    reservations = {"course": parse_reservations([{**WEEKLY, "units": 2}], "course")}
    kept = with_reservations({}, reservations, POOL, at(1, 9, 1), GRACE)
    lent = with_reservations({}, reservations, POOL, at(1, 9, 11), GRACE)
    # a pool of 3 with 1 held by an outsider: 2 free
    assert PoolShares(kept, "").verdict({"": 1}, 2) == KEPT
    assert PoolShares(kept, "course").verdict({"": 1}, 2) is None
    assert PoolShares(lent, "").verdict({"": 1}, 2) is None  # lent: the outsider may take it
    # a member still goes first in line, while the course holds fewer than its reservation
    assert PoolShares(lent, "course").first_served({"": 2}) and not PoolShares(lent, "").first_served({"": 2})
    assert not PoolShares(lent, "course").first_served({"course": 2})


INF = float("inf")


@pytest.mark.parametrize("moment, shares, held, mine, expected", [
    # in the grace period (09:00-09:10): the course's 4 units are kept from an outsider until 09:10
    (at(1, 9, 4), {}, {}, [], [Keep(4, -240, 360)]),
    # those the course holds already are not kept again
    (at(1, 9, 4), {}, {"course": 3}, [], [Keep(1, -240, 360)]),
    # a member waits: the course keeps nothing from its own members
    (at(1, 9, 4), {}, {}, ["course"], []),
    # lent after the grace period: nothing kept (members go first in line, they are in the place)
    (at(1, 9, 30), {}, {}, [], []),
    # an hour before: a window that opens while the place waits keeps its units from then
    (at(1, 8), {}, {}, [], [Keep(4, 3600, 4200)]),
    # the course's guaranteed share of 2 is kept for good; the reservation keeps the 2 beyond it
    (at(1, 9, 4), {"course": Share(2)}, {}, [], [Keep(2, 0, INF), Keep(2, -240, 360)]),
    # another group's unused guarantee, no reservation of its own
    (at(2, 10), {"lab": Share(3)}, {"lab": 1}, [], [Keep(2, 0, INF)]),
    # next Tuesday's window is past what an estimate looks ahead to (12 h)
    (at(2, 10), {}, {}, [], []),
])
def test_what_other_groups_keep_from_a_place_in_line(moment, shares, held, mine, expected):
    reservations = {"course": parse_reservations([WEEKLY], "course")}
    assert keeps_from(shares, reservations, POOL, moment, GRACE, mine, held) == expected
    assert keeps_from(shares, reservations, "gpu", moment, GRACE, mine, held) == [
        k for k in expected if k.until == INF]  # another pool: only the guarantees given for it
