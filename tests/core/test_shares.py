"""Guaranteed shares and bursts (core/shares.py): the pure rules, as tables."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core.shares import (
    BURST,
    FULL,
    KEPT,
    PoolShares,
    Share,
    ShareError,
    Wanted,
    choose_group,
    entitled,
    overcommitted,
    parse_shares,
    pool_shares,
    wanted_back,
)

COURSE, LAB = "course", "lab"


@pytest.mark.parametrize("raw, expected", [
    (None, {}),
    ("", {}),
    ({"mig-1g.10gb": {"guaranteed": 4, "burst": 8}}, {"mig-1g.10gb": Share(4, 8)}),
    ('{"gpu": {"guaranteed": "2"}}', {"gpu": Share(2, None)}),  # typed in the admin panel: JSON text
    ({"gpu": 3}, {"gpu": Share(3, None)}),  # a bare number is the guarantee
    ({"gpu": {"guaranteed": 1, "burst": "unlimited"}}, {"gpu": Share(1, None)}),
    ({"gpu": {"burst": 2}}, {"gpu": Share(0, 2)}),  # no guarantee, a cap only
    ({"gpu": {"guaranteed": 2.0, "burst": 2}}, {"gpu": Share(2, 2)}),
])
def test_a_share_is_read_as_written(raw, expected):
    assert parse_shares(raw, "group 'course'") == expected


@pytest.mark.parametrize("raw, says", [
    ("{gpu: 1}", "is not JSON"),
    ([1, 2], "must map pools to shares"),
    ({"gpu": {"guaranteed": 4, "burst": 2}}, "burst 2 is below guaranteed 4"),
    ({"gpu": {"guaranteed": -1}}, "not a whole number of units from 0 to 1000"),
    ({"gpu": {"guaranteed": 1.5}}, "not a whole number"),
    ({"gpu": {"guaranteed": True}}, "not a whole number"),
    ({"gpu": {"guaranteed": 5000}}, "from 0 to 1000"),
    ({"gpu": {"guarantee": 1}}, "guarantee is not guaranteed or burst"),  # a typo is not "no share"
])
def test_a_share_that_cannot_be_used_is_refused_naming_the_group_and_pool(raw, says):
    with pytest.raises(ShareError) as e:
        parse_shares(raw, "group 'course'")
    assert says in str(e.value) and "course" in str(e.value)


# a pool of 6: the course is guaranteed 2 and may burst to 4; the lab is guaranteed 2, no cap
SHARES = {COURSE: Share(2, 4), LAB: Share(2, None)}


@pytest.mark.parametrize("group, held, free, verdict", [
    # within its guarantee a member takes any free unit, even the last
    (COURSE, {}, 6, None),
    (COURSE, {LAB: 2, "": 2, COURSE: 1}, 1, None),
    # past its guarantee: only units the other guarantees leave (lab's 2 unused keep 2 of 3 free)
    (COURSE, {COURSE: 2, "": 1}, 3, None),
    (COURSE, {COURSE: 2, "": 2}, 2, KEPT),
    (COURSE, {COURSE: 2, LAB: 1, "": 2}, 1, KEPT),  # lab still has 1 unused: the last unit is kept
    (COURSE, {COURSE: 2, LAB: 2, "": 1}, 1, None),  # lab's guarantee is used: the unit may go
    # the course's burst caps it, however many are free
    (COURSE, {COURSE: 4}, 2, BURST),
    (COURSE, {COURSE: 4, "": 2}, 0, BURST),  # said when the pool is full too: a unit freed would not be its
    # no one takes from an empty pool
    (COURSE, {COURSE: 0, "": 6}, 0, FULL),
    # outsiders (no group with a share): every unused guarantee is kept from them
    ("", {}, 6, None),
    ("", {"": 2}, 4, KEPT),
    ("", {"": 2, COURSE: 2}, 2, KEPT),
    ("", {"": 2, COURSE: 2, LAB: 1}, 1, KEPT),
    ("", {"": 1, COURSE: 2, LAB: 2}, 1, None),
    # the lab has no cap: past its guarantee it takes what the course's guarantee leaves
    (LAB, {LAB: 3, COURSE: 2}, 1, None),
    (LAB, {LAB: 3}, 1, KEPT),  # the course has used none of its 2
    (LAB, {LAB: 3}, 2, KEPT),
])
def test_who_may_take_a_free_unit(group, held, free, verdict):
    assert PoolShares(SHARES, group).verdict(held, free) == verdict


@pytest.mark.parametrize("group, held, free, available", [
    (COURSE, {}, 6, 4),  # the lab's unused 2 keep 2 of 6
    (COURSE, {}, 3, 1),  # its own kept units are free for it, the lab's are not
    (COURSE, {COURSE: 3}, 3, 1),  # one under its burst
    (COURSE, {COURSE: 4}, 2, 0),
    ("", {}, 6, 2),  # an outsider: only what no guarantee keeps
    ("", {COURSE: 2, LAB: 2}, 2, 2),
    (LAB, {}, 3, 1),
])
def test_the_free_units_a_spawn_form_counts_for_each(group, held, free, available):
    assert PoolShares(SHARES, group).available(held, free) == available


@pytest.mark.parametrize("member_of, held, counted_for", [
    ([COURSE, LAB], {}, LAB),  # equal guarantee left: the most burst room (the lab has no cap)
    ([COURSE, "lab2"], {}, COURSE),  # equal in both: the first by name
    ([COURSE, LAB], {COURSE: 1}, LAB),  # the most guarantee left
    ([COURSE, LAB], {COURSE: 2, LAB: 2}, LAB),  # none left: the most burst room (the lab has no cap)
    ([COURSE], {COURSE: 9}, COURSE),  # its only group, even at its burst (it waits)
    (["students"], {}, ""),  # no group with a share of the pool
    ([], {}, ""),
])
def test_the_group_a_unit_counts_for(member_of, held, counted_for):
    assert choose_group(member_of, {**SHARES, "lab2": Share(2, 4)}, held) == counted_for


def test_shares_of_one_pool_and_guarantees_beyond_it():
    groups = {COURSE: {"gpu": Share(3), "mig-1g.10gb": Share(1)}, LAB: {"gpu": Share(2, 2)}, "x": {}}
    assert pool_shares(groups, "gpu") == {COURSE: Share(3), LAB: Share(2, 2)}
    assert pool_shares(groups, "mig-1g.10gb") == {COURSE: Share(1)}
    assert overcommitted(pool_shares(groups, "gpu"), 4) == 1
    assert overcommitted(pool_shares(groups, "gpu"), 8) == 0


def test_a_held_back_spawn_is_told_why_in_words():
    assert "Your group course holds 4 GPU units, the most it may hold at once (its guaranteed share is 2)" in \
        PoolShares(SHARES, COURSE).why(BURST, "GPU")
    assert "holds 1 GPU unit, the most" in PoolShares({COURSE: Share(0, 1)}, COURSE).why(BURST, "GPU")
    assert "kept for groups with a guaranteed share" in PoolShares(SHARES, "").why(KEPT, "GPU")
    assert PoolShares(SHARES, "").why(FULL, "GPU") == ""


# ---- what a line wants back from servers over their share -------------------------------

LAB_SHARE, COURSE_SHARE = Share(guaranteed=1), Share(guaranteed=0, claim=2)  # a guarantee; a reservation lent out
NOW = 10_000.0


@pytest.mark.parametrize(
    ("held", "waiting", "expected"),
    [
        # nobody waits: nothing wanted
        ({"": 2}, [], Wanted()),
        # a lab member waits within the lab's guarantee while outsiders hold the pool
        ({"": 2}, [("lab", NOW - 30)], Wanted(1, (), frozenset({""}))),
        # the lab holds its guarantee: its next member waits for a free unit, wants nothing back
        ({"lab": 1, "": 1}, [("lab", NOW - 30)], Wanted()),
        # three lab members wait: the guarantee lacks one unit, not three
        ({"": 2}, [("lab", NOW - 9), ("lab", NOW - 8), ("lab", NOW - 7)], Wanted(1, (), frozenset({""}))),
        # the course's reservation (a claim): each waiting member's wait is told, longest first
        ({"lab": 2}, [("course", NOW - 100), ("course", NOW - 700)],
         Wanted(2, (700.0, 100.0), frozenset({"lab"}))),
        # only groups over their entitlement give back: the lab at its guarantee does not
        ({"lab": 1, "": 1}, [("course", NOW - 5)], Wanted(1, (5.0,), frozenset({""}))),
        # a user in no group with a share is entitled to nothing: waiting wants nothing back
        ({"lab": 2}, [("", NOW - 900)], Wanted()),
        # a group with no share of this pool is like no group
        ({"": 2}, [("other", NOW - 900)], Wanted()),
    ],
)
def test_what_a_line_wants_back(held, waiting, expected):
    assert wanted_back({"lab": LAB_SHARE, "course": COURSE_SHARE}, held, waiting, NOW) == expected


def test_entitled_is_the_larger_of_guarantee_and_claim():
    assert [entitled(s) for s in (None, Share(), Share(2), Share(1, None, 3), Share(4, 5, 2))] == [0, 0, 2, 3, 4]
