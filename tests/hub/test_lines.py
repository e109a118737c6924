"""What the hub's lines want back, as the culler reads it (gpuhub_spawner/hub/lines.py), from a
real single-host allocator with guaranteed shares and a reservation's claim."""

from __future__ import annotations

import asyncio
import time

from allocator_fakes import FakeEngine, make_inventory, spawn, until

from gpuhub_spawner.core.shares import PoolShares, Share
from gpuhub_spawner.hub.allocator import Allocator
from gpuhub_spawner.hub.lines import allocator_wants, hub_wants

# 2 whole GPUs: the lab is guaranteed 1; the course's reservation was lent out (a claim of 1)
SHARES = {"lab": Share(1), "course": Share(0, None, 1)}
LAB, COURSE, OUTSIDE = (PoolShares(SHARES, g) for g in ("lab", "course", ""))


class _State:
    def __init__(self, alloc: Allocator):
        self.allocators, self.gates = {"engine": alloc}, {}


async def test_a_member_within_a_guarantee_waiting_wants_the_outsiders_units_back():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=2), engine.list_held, engine.remove, resync_interval=0.05)
    # ann and bob took both units before the shares were set (or the reservation's window began)
    await spawn(alloc, engine, "ann-server", "gpu", owner="ann")
    await spawn(alloc, engine, "bob-server", "gpu", owner="bob")
    assert allocator_wants(alloc, time.time()) == {}  # nobody waits
    # an outsider waiting wants nothing back: it is entitled to nothing
    out = asyncio.ensure_future(spawn(alloc, engine, "cat-server", "gpu", share=OUTSIDE, owner="cat", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    assert allocator_wants(alloc, time.time()) == {}
    # a lab member (guarantee) and a course member (reservation) wait: both want a unit back
    lab = asyncio.ensure_future(spawn(alloc, engine, "lea-server", "gpu", share=LAB, owner="lea", max_wait=30))
    course = asyncio.ensure_future(spawn(alloc, engine, "cole-server", "gpu", share=COURSE, owner="cole",
                                         max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 3)
    later = time.time() + 100
    wants = hub_wants([_State(alloc)], now=later)["pools"]
    assert wants["gpu"]["units"] == 2 and wants["gpu"]["over"] == ["ann", "bob"]
    (waited,) = wants["gpu"]["reserved_waits"]  # the course member's wait alone: a reservation
    assert 99 <= waited <= 105
    # ann's server stops: the freed unit goes to a member within its share, and the line wants one less
    engine.vanish("ann-server")
    await alloc.release("ann-server")
    await until(lambda: alloc.queue_length("gpu") == 2)
    assert allocator_wants(alloc, time.time())["gpu"]["units"] == 1
    for task in (out, lab, course):
        task.cancel()
    await asyncio.gather(out, lab, course, return_exceptions=True)
