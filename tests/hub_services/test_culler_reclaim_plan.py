"""Which GPU servers give units back when the hub's lines want them (hub_services/culler/reclaim.py)."""

from __future__ import annotations

import pytest

from hub_services.culler.reclaim import Reclaims, plan

SERVERS = {  # (user, server) -> (pool, started)
    ("ann", ""): ("gpu", 100.0),
    ("bob", ""): ("gpu", 300.0),
    ("bob", "second"): ("mig", 200.0),
    ("cat", ""): ("gpu", 200.0),
}


@pytest.mark.parametrize(
    ("wants", "expected"),
    [
        ({}, Reclaims()),
        # a guarantee waits: every over-share server of the pool (other pools untouched), none taken back
        ({"gpu": {"units": 1, "reserved_waits": [], "over": ["ann", "bob"]}},
         Reclaims(frozenset({("ann", ""), ("bob", "")}))),
        # a reservation's member waited past the bound: the most recently started is taken back
        ({"gpu": {"units": 1, "reserved_waits": [700.0], "over": ["ann", "bob", "cat"]}},
         Reclaims(frozenset({("ann", ""), ("bob", ""), ("cat", "")}), frozenset({("bob", "")}))),
        # two waited past it, one not yet: two taken back
        ({"gpu": {"units": 3, "reserved_waits": [900.0, 601.0, 20.0], "over": ["ann", "bob", "cat"]}},
         Reclaims(frozenset({("ann", ""), ("bob", ""), ("cat", "")}), frozenset({("bob", ""), ("cat", "")}))),
        # never more than the units the line lacks
        ({"gpu": {"units": 1, "reserved_waits": [900.0, 800.0], "over": ["ann"]}},
         Reclaims(frozenset({("ann", "")}), frozenset({("ann", "")}))),
        # garbage from the hub is ignored, not a crash
        ({"gpu": "nonsense", "mig": {"units": "x", "over": ["bob"], "reserved_waits": [900.0]}}, Reclaims()),
    ],
)
def test_plan(wants, expected):
    assert plan(wants, SERVERS, reclaim_after=600) == expected
