"""Guaranteed shares and bursts in the single-host allocator (rules: core/shares.py): a unit
kept for a group's unused guarantee is not given to others, a member within its guarantee is not
held behind those waiting for an unkept unit, a burst caps its group, and a restarted hub counts
each unit for the group its labels name."""

from __future__ import annotations

import asyncio

import pytest
from allocator_fakes import FakeEngine, make_inventory, spawn, until

from gpuhub_spawner.core.shares import BURST, KEPT, PoolShares, Share
from gpuhub_spawner.hub.allocator import Allocator, NoUnitFree

# a pool of 4 whole GPUs: the course is guaranteed 2 and may burst to 3
SHARES = {"course": Share(2, 3)}
COURSE, OUTSIDE = PoolShares(SHARES, "course"), PoolShares(SHARES, "")


def allocator(engine: FakeEngine) -> Allocator:
    return Allocator(make_inventory(whole=4), engine.list_held, engine.remove, resync_interval=0.05)


async def test_units_kept_for_an_unused_guarantee_go_to_members_not_to_the_others():
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(2):  # two outsiders take the two units the guarantee leaves
        await spawn(alloc, engine, f"out{i}", "gpu", share=OUTSIDE)
    assert alloc.free_counts()["gpu"] == 2
    with pytest.raises(NoUnitFree):  # two free, both kept for the course: not given, not waited for
        await spawn(alloc, engine, "out2", "gpu", share=OUTSIDE)
    waiting = asyncio.ensure_future(spawn(alloc, engine, "out3", "gpu", share=OUTSIDE, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    assert alloc.line.held_back("gpu", "out3") == (KEPT, OUTSIDE)
    # members arrive: each takes a kept unit at once, though someone waits in line
    await spawn(alloc, engine, "member0", "gpu", share=COURSE)
    await spawn(alloc, engine, "member1", "gpu", share=COURSE)
    assert alloc.held_by_group("gpu") == {"": 2, "course": 2} and not waiting.done()
    # an outsider's server stops: its unit goes to the outsider in line
    engine.vanish("out0")
    await alloc.release("out0")
    await asyncio.wait_for(waiting, 5)
    assert alloc.held_by_group("gpu") == {"": 2, "course": 2}


async def test_a_member_within_its_guarantee_passes_those_held_back_in_line():
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(2):
        await spawn(alloc, engine, f"out{i}", "gpu", share=OUTSIDE)
    await spawn(alloc, engine, "member0", "gpu", share=COURSE)
    held_back = asyncio.ensure_future(spawn(alloc, engine, "out2", "gpu", share=OUTSIDE, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    # one free unit, kept for the course's second guaranteed unit; a member is not held behind out2
    unit = await spawn(alloc, engine, "member1", "gpu", share=COURSE, max_wait=30)
    assert unit is not None and not held_back.done()
    held_back.cancel()


async def test_a_unit_freed_goes_to_the_first_in_line_who_may_take_it():
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(2):
        await spawn(alloc, engine, f"member{i}", "gpu", share=COURSE)
    for i in range(2):
        await spawn(alloc, engine, f"out{i}", "gpu", share=OUTSIDE)
    # full: member2 (over its guarantee, under its burst) then out2 wait; member2 first in line
    member2 = asyncio.ensure_future(spawn(alloc, engine, "member2", "gpu", share=COURSE, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    out2 = asyncio.ensure_future(spawn(alloc, engine, "out2", "gpu", share=OUTSIDE, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 2)
    # a member stops: the course now uses 1 of its 2; the freed unit is kept for the course, so the
    # first in line who may take it is member2 (counted within the guarantee again)
    engine.vanish("member0")
    await alloc.release("member0")
    await asyncio.wait_for(member2, 5)
    assert not out2.done() and alloc.held_by_group("gpu") == {"course": 2, "": 2}
    out2.cancel()


async def test_a_group_at_its_burst_waits_while_others_take_what_is_free():
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(3):  # guaranteed 2, burst 3: three fit while the pool has room
        await spawn(alloc, engine, f"member{i}", "gpu", share=COURSE)
    capped = asyncio.ensure_future(spawn(alloc, engine, "member3", "gpu", share=COURSE, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    assert alloc.line.held_back("gpu", "member3") == (BURST, COURSE)
    await spawn(alloc, engine, "out0", "gpu", share=OUTSIDE)  # the one free unit is not the course's
    engine.vanish("member0")
    await alloc.release("member0")
    await asyncio.wait_for(capped, 5)  # below its burst again
    assert alloc.held_by_group("gpu") == {"course": 3, "": 1}


async def test_a_restarted_hub_counts_units_for_the_groups_their_labels_name():
    engine = FakeEngine()
    inventory = make_inventory(whole=4)
    units = list(inventory.pools["gpu"])
    engine.run("member0", units[0], group="course")
    engine.run("out0", units[1])
    engine.run("out1", units[2])
    alloc = Allocator(inventory, engine.list_held, engine.remove)
    await alloc.ensure_synced()
    assert alloc.held_by_group("gpu") == {"course": 1, "": 2}
    with pytest.raises(NoUnitFree):  # the last unit is the course's second guaranteed one
        await spawn(alloc, engine, "out2", "gpu", share=OUTSIDE)
    await spawn(alloc, engine, "member1", "gpu", share=COURSE)


async def test_without_shares_the_line_is_first_come_first_served_as_before():
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(4):
        await spawn(alloc, engine, f"u{i}", "gpu")
    first = asyncio.ensure_future(spawn(alloc, engine, "first", "gpu", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    second = asyncio.ensure_future(spawn(alloc, engine, "second", "gpu", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 2)
    engine.vanish("u0")
    await alloc.release("u0")
    await asyncio.wait_for(first, 5)
    assert not second.done()
    second.cancel()


async def test_a_lent_reservation_keeps_nothing_but_its_members_go_first_in_line():
    # after its grace period a reservation of 2 is a claim: nothing kept, members served first
    lent = {"course": Share(0, None, 2)}
    member, outsider = PoolShares(lent, "course"), PoolShares(lent, "")
    engine = FakeEngine()
    alloc = allocator(engine)
    for i in range(4):  # the unclaimed units were lent: outsiders hold the whole pool
        await spawn(alloc, engine, f"out{i}", "gpu", share=outsider)
    early = asyncio.ensure_future(spawn(alloc, engine, "out4", "gpu", share=outsider, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    late = asyncio.ensure_future(spawn(alloc, engine, "member0", "gpu", share=member, max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 2)
    engine.vanish("out0")
    await alloc.release("out0")
    await asyncio.wait_for(late, 5)  # the member, though it asked after out4
    assert not early.done() and alloc.held_by_group("gpu") == {"": 3, "course": 1}
    early.cancel()
