"""The ledger never hands a unit out twice; the allocator queues fairly and follows the engine.

The engine is an in-memory list of :class:`HeldRecord` that each test controls
(tests/support/allocator_fakes.py): it plays the labelled containers a real Docker engine would list.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from allocator_fakes import FakeEngine, gpu, make_inventory, spawn, until

from gpuhub_spawner.core.inventory import Inventory, Unit
from gpuhub_spawner.hub.allocator import Allocator, HeldRecord, Ledger, NoUnitFree, StillHeld

# ---- Ledger ------------------------------------------------------------------------------


def test_take_until_empty():
    inventory = make_inventory(whole=2, replicas=(2,))
    ledger = Ledger(inventory)
    taken = [ledger.take("gpu", "a"), ledger.take("gpu", "b")]
    assert {u.id for u in taken} == {gpu(0), gpu(1)}
    assert ledger.take("gpu", "c") is None
    assert ledger.free_count("gpu") == 0
    assert ledger.free_count("shared") == 2
    assert ledger.take("no-such-pool", "d") is None
    assert ledger.free_count("no-such-pool") == 0
    assert ledger.holders() == {"a": taken[0].id, "b": taken[1].id}


def test_take_twice_for_one_holder_is_refused():
    ledger = Ledger(make_inventory(whole=2))
    ledger.take("gpu", "a")
    with pytest.raises(ValueError, match="already holds"):
        ledger.take("gpu", "a")


def test_release_returns_the_unit_and_frees_it():
    ledger = Ledger(make_inventory(whole=1))
    unit = ledger.take("gpu", "a")
    assert ledger.release("a") == unit
    assert ledger.release("a") is None
    assert ledger.unit_of("a") is None
    assert ledger.free_count("gpu") == 1
    assert ledger.take("gpu", "b") == unit


def test_hold():
    inventory = make_inventory(whole=2)
    ledger = Ledger(inventory)
    assert ledger.hold(gpu(1), "a")
    assert ledger.hold(gpu(1), "a")  # again, same holder: fine
    assert not ledger.hold(gpu(1), "b")  # conflict
    assert not ledger.hold("GPU-not-in-inventory", "b")
    assert ledger.take("gpu", "b").id == gpu(0)  # the held one is not free
    assert ledger.take("gpu", "c") is None
    # a holder that moves to another unit gives up its old one
    ledger.release("b")
    assert ledger.hold(gpu(0), "a")
    assert ledger.holders() == {"a": gpu(0)}
    assert ledger.free_count("gpu") == 1


def test_spread_across_gpus_before_doubling_up():
    ledger = Ledger(make_inventory(replicas=(2, 2)))
    taken = [ledger.take("shared", f"h{i}") for i in range(4)]
    assert [(u.gpu_uuid, u.slot) for u in taken] == [
        (gpu(100), 0),
        (gpu(101), 0),
        (gpu(100), 1),
        (gpu(101), 1),
    ]


def test_released_units_go_to_the_back():
    ledger = Ledger(make_inventory(whole=3))
    first = ledger.take("gpu", "a")
    ledger.release("a")
    assert [ledger.take("gpu", h).id for h in "bcd"] == [gpu(1), gpu(2), first.id]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_random_take_release_never_double_books(seed):
    rng = random.Random(seed)
    inventory = make_inventory(whole=3, replicas=(4, 2))
    ledger = Ledger(inventory)
    pools = ["gpu", "shared", "missing"]
    holders = [f"h{i}" for i in range(20)]
    for _step in range(200):
        holder = rng.choice(holders)
        action = rng.random()
        if ledger.unit_of(holder) is not None and action < 0.5:
            unit = ledger.unit_of(holder)
            assert ledger.release(holder) == unit
        elif ledger.unit_of(holder) is None and action < 0.9:
            pool = rng.choice(pools)
            free_before = ledger.free_count(pool)
            unit = ledger.take(pool, holder)
            assert (unit is None) == (free_before == 0)
            if unit is not None:
                assert unit.pool == pool
        else:
            unit_id = rng.choice(list(inventory.by_id))
            owner = {u: h for h, u in ledger.holders().items()}.get(unit_id)
            assert ledger.hold(unit_id, holder) == (owner in (None, holder))

        held = ledger.holders()
        assert len(set(held.values())) == len(held), "a unit has two holders"
        for pool, members in inventory.pools.items():
            in_use = sum(1 for u in held.values() if inventory.by_id[u].pool == pool)
            assert ledger.free_count(pool) + in_use == len(members)
        for holder_name, unit_id in held.items():
            assert ledger.unit_of(holder_name).id == unit_id


# ---- Allocator: concurrency ------------------------------------------------------------


async def test_concurrent_reserves_never_share_a_unit():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(replicas=(2, 2)), engine.list_held)
    results = await asyncio.gather(
        *(spawn(alloc, engine, f"user{i}", "shared") for i in range(12)), return_exceptions=True
    )
    units = [r for r in results if isinstance(r, Unit)]
    refused = [r for r in results if isinstance(r, NoUnitFree)]
    assert len(units) == 4 and len(refused) == 8, results
    assert len({u.id for u in units}) == 4
    assert all(r.pool == "shared" and r.waited == 0 for r in refused)
    assert alloc.free_counts() == {"shared": 0}
    assert sorted(r.unit_id for r in engine.records) == sorted(u.id for u in units)


async def test_unknown_pool_is_refused_at_once():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    with pytest.raises(NoUnitFree) as info:
        await spawn(alloc, engine, "a", "mig-1g.10gb", max_wait=5)
    assert info.value.pool == "mig-1g.10gb"


async def test_queue_is_fifo_with_positions():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=2), engine.list_held)
    holders = [await spawn(alloc, engine, h, "gpu") for h in ("h1", "h2")]

    positions: dict[str, list[tuple[int, int]]] = {}
    waiters = {}
    for i, name in enumerate(["w1", "w2", "w3"]):
        positions[name] = []
        waiters[name] = asyncio.create_task(
            spawn(
                alloc,
                engine,
                name,
                "gpu",
                max_wait=30,
                on_position=lambda p, t, n=name: positions[n].append((p, t)),
            )
        )
        await until(lambda i=i: alloc.queue_length("gpu") == i + 1)
    assert {n: p[-1] for n, p in positions.items()} == {"w1": (1, 3), "w2": (2, 3), "w3": (3, 3)}

    engine.vanish("h1")
    assert await alloc.release("h1") == holders[0]
    assert await waiters["w1"] == holders[0]
    assert alloc.queue_length("gpu") == 2
    assert positions["w2"][-1] == (1, 2) and positions["w3"][-1] == (2, 2)

    # a newcomer does not jump the queue, even though the engine is re-read
    with pytest.raises(NoUnitFree):
        await spawn(alloc, engine, "newcomer", "gpu")
    late = asyncio.create_task(spawn(alloc, engine, "late", "gpu", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 3)

    engine.vanish("h2")
    await alloc.release("h2")
    assert await waiters["w2"] == holders[1]
    assert not waiters["w3"].done() and not late.done()
    assert alloc.ledger.holders() == {"w1": holders[0].id, "w2": holders[1].id}

    for task in (waiters["w3"], late):
        task.cancel()
    await asyncio.gather(waiters["w3"], late, return_exceptions=True)
    assert alloc.queue_length("gpu") == 0


async def test_waiter_times_out_with_its_position():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held, resync_interval=0.02)
    await spawn(alloc, engine, "h", "gpu")
    first = asyncio.create_task(spawn(alloc, engine, "w1", "gpu", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    with pytest.raises(NoUnitFree) as info:
        await spawn(alloc, engine, "w2", "gpu", max_wait=0.1)
    assert info.value.pool == "gpu"
    assert info.value.waited >= 0.1
    assert info.value.position == 2
    assert alloc.queue_length("gpu") == 1
    assert alloc.unit_of("w2") is None
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def one_gpu_held_and_waiting(*waiters: str):
    """One whole GPU held by "h", with ``waiters`` waiting in line for it, in this order."""
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    unit = await spawn(alloc, engine, "h", "gpu")
    tasks = []
    for name in waiters:
        tasks.append(asyncio.create_task(spawn(alloc, engine, name, "gpu", max_wait=30)))
        await until(lambda n=len(tasks): alloc.queue_length("gpu") == n)
    return engine, alloc, unit, *tasks


async def test_cancelled_waiter_leaves_the_queue():
    engine, alloc, unit, w1, w2 = await one_gpu_held_and_waiting("w1", "w2")

    w1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w1
    assert alloc.queue_length("gpu") == 1

    engine.vanish("h")
    await alloc.release("h")
    assert await w2 == unit
    assert alloc.ledger.holders() == {"w2": unit.id}


@pytest.mark.parametrize("order", ["cancel-then-release", "release-then-cancel"])
async def test_unit_handed_to_a_cancelled_waiter_is_passed_on(order):
    engine, alloc, unit, w1, w2 = await one_gpu_held_and_waiting("w1", "w2")

    engine.vanish("h")
    # both happen before w1 runs again: the unit reaches w1 as it is cancelled
    if order == "cancel-then-release":
        w1.cancel()
        await alloc.release("h")
    else:
        await alloc.release("h")
        w1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w1
    assert await asyncio.wait_for(w2, 5) == unit
    assert alloc.ledger.holders() == {"w2": unit.id}
    assert alloc.queue_length("gpu") == 0
    assert not alloc._pending, "a reservation was left pending"  # noqa: SLF001


async def test_handed_unit_is_not_taken_back_by_a_resync():
    """Between hand-off and the waiter waking up, a newcomer's re-read must not free the unit."""
    engine, alloc, unit, waiter = await one_gpu_held_and_waiting("w")

    engine.vanish("h")
    await alloc.release("h")  # hands the unit to w; w has not run yet
    newcomer = asyncio.create_task(spawn(alloc, engine, "n", "gpu"))
    results = await asyncio.gather(waiter, newcomer, return_exceptions=True)
    assert results[0] == unit
    assert isinstance(results[1], NoUnitFree), results
    assert alloc.ledger.holders() == {"w": unit.id}


async def test_old_object_still_running_keeps_its_unit_when_reserving_again():
    """A holder reserving again while its old object still runs (a failed stop) is refused:
    the old unit is never handed on under a live object (labels are the truth)."""
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=2), engine.list_held)
    old = await spawn(alloc, engine, "a", "gpu")
    with pytest.raises(StillHeld) as info:
        async with alloc.reserve("gpu", "a"):
            pytest.fail("reserved while the old object still runs")
    assert info.value.unit_id == old.id
    assert alloc.unit_of("a") == old
    other = await spawn(alloc, engine, "n", "gpu")
    assert other != old  # never the unit the leftover object still uses
    engine.vanish("a")  # the leftover is gone now: reserving again works
    async with alloc.reserve("gpu", "a") as again:
        assert again == old


# ---- Allocator: the engine is the truth --------------------------------------------------


async def test_startup_sync_holds_running_and_removes_stale():
    inventory = make_inventory(whole=4)
    engine = FakeEngine(
        [
            HeldRecord("running", gpu(0), "running", "c0"),
            HeldRecord("half-made", gpu(1), "created", "c1", ours=True),
            HeldRecord("other-hub", gpu(2), "exited", "c2", ours=False),
            HeldRecord("stranger", "GPU-not-in-inventory", "running", "c3"),
        ]
    )
    alloc = Allocator(inventory, engine.list_held, remove_stale=engine.remove)
    await alloc.ensure_synced()
    await alloc.ensure_synced()  # only once
    assert engine.list_calls == 1
    assert alloc.ledger.holders() == {"running": gpu(0)}
    assert [r.holder for r in engine.removed] == ["half-made"]
    assert alloc.free_counts() == {"gpu": 3}
    taken = [await spawn(alloc, engine, f"u{i}", "gpu") for i in range(3)]
    assert {u.id for u in taken} == {gpu(1), gpu(2), gpu(3)}


async def test_startup_sync_survives_a_failing_remove():
    engine = FakeEngine([HeldRecord("half-made", gpu(0), "created")])

    async def broken_remove(record: HeldRecord) -> None:
        raise RuntimeError("engine said no")

    alloc = Allocator(make_inventory(whole=1), engine.list_held, remove_stale=broken_remove)
    assert await spawn(alloc, engine, "a", "gpu") == alloc.inventory.by_id[gpu(0)]


@pytest.mark.parametrize(
    "state, holds",
    [("created", True), ("restarting", True), ("paused", True), ("exited", False), ("dead", False)],
)
async def test_resync_after_startup_keeps_units_of_live_objects(state, holds):
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    unit = await spawn(alloc, engine, "a", "gpu")
    engine.records = [HeldRecord("a", unit.id, state)]
    if holds:
        with pytest.raises(NoUnitFree):
            await spawn(alloc, engine, "b", "gpu")  # an empty pool re-reads the engine
        assert alloc.ledger.holders() == {"a": unit.id}
    else:
        assert await spawn(alloc, engine, "b", "gpu") == unit
        assert alloc.ledger.holders() == {"b": unit.id}


async def test_resync_frees_a_unit_whose_object_vanished():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held, resync_interval=0.05)
    unit = await spawn(alloc, engine, "h", "gpu")
    waiter = asyncio.create_task(spawn(alloc, engine, "w", "gpu", max_wait=10))
    await until(lambda: alloc.queue_length("gpu") == 1)
    engine.vanish("h")  # removed behind the hub's back; nobody calls release()
    assert await asyncio.wait_for(waiter, 5) == unit
    assert alloc.ledger.holders() == {"w": unit.id}


async def test_empty_pool_rereads_the_engine_before_refusing():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    unit = await spawn(alloc, engine, "h", "gpu")
    engine.vanish("h")
    assert await spawn(alloc, engine, "a", "gpu") == unit


async def test_failing_body_releases_the_unit():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    with pytest.raises(RuntimeError, match="create failed"):
        async with alloc.reserve("gpu", "a") as unit:
            assert alloc.unit_of("a") == unit
            raise RuntimeError("create failed")
    assert alloc.unit_of("a") is None
    assert alloc.free_counts() == {"gpu": 1}


async def test_failing_body_hands_the_unit_to_the_next_waiter():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    entered = asyncio.Event()
    fail = asyncio.Event()

    async def failing() -> None:
        async with alloc.reserve("gpu", "a"):
            entered.set()
            await fail.wait()
            raise RuntimeError("create failed")

    first = asyncio.create_task(failing())
    await entered.wait()
    waiter = asyncio.create_task(spawn(alloc, engine, "w", "gpu", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    fail.set()
    with pytest.raises(RuntimeError):
        await first
    assert (await waiter).id == gpu(0)


async def test_cancelled_body_releases_the_unit():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    entered = asyncio.Event()

    async def slow_create() -> None:
        async with alloc.reserve("gpu", "a"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(slow_create())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert alloc.free_counts() == {"gpu": 1}


async def test_reserving_again_releases_the_old_unit_first():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=1), engine.list_held)
    unit = await spawn(alloc, engine, "a", "gpu")
    engine.vanish("a")  # the caller removes its old object before creating
    async with alloc.reserve("gpu", "a") as again:
        assert again == unit
        assert alloc.ledger.holders() == {"a": unit.id}


async def test_pending_reservation_survives_a_resync():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=2), engine.list_held)
    async with alloc.reserve("gpu", "a") as unit:
        # the object is not created yet, and another spawn re-reads the engine
        await spawn(alloc, engine, "b", "gpu")
        with pytest.raises(NoUnitFree):
            await spawn(alloc, engine, "c", "gpu")
        assert alloc.unit_of("a") == unit
        engine.run("a", unit)
    assert alloc.free_counts() == {"gpu": 0}


def test_rebuild_leaves_no_stale_queue_entries():
    # after holding most units (a hub restart re-adopting them), the next take is O(1):
    # the free queue holds exactly the free units, once each
    units = [Unit(f"GPU-c{i}", "gpu", "gpu", f"GPU-c{i}", f"GPU-c{i}") for i in range(100)]
    ledger = Ledger(Inventory(tuple(units)))
    for i in range(90):
        assert ledger.hold(f"GPU-c{i}", f"h{i}")
    ledger.compact()
    queue = ledger._pools["gpu"]._queue
    assert sorted(queue) == sorted(f"GPU-c{i}" for i in range(90, 100))
    for i in range(90):  # churn never grows the queue without bound
        ledger.release(f"h{i}")
        assert ledger.take("gpu", f"h{i}") is not None
    assert len(ledger._pools["gpu"]._queue) <= 2 * 100 + 16


async def test_higher_priority_waiters_go_first_fifo_within_a_priority():
    units = [Unit("GPU-p0", "gpu", "gpu", "GPU-p0", "GPU-p0")]
    records: list[HeldRecord] = []

    async def list_held() -> list[HeldRecord]:
        return list(records)

    alloc = Allocator(Inventory(tuple(units)), list_held, resync_interval=30)
    async with alloc.reserve("gpu", "owner"):
        records.append(HeldRecord("owner", "GPU-p0", "running"))
    order: list[str] = []

    async def wait(holder: str, priority: int) -> None:
        async with alloc.reserve("gpu", holder, max_wait=10, priority=priority):
            order.append(holder)
            records[:] = [HeldRecord(holder, "GPU-p0", "running")]
        await asyncio.sleep(0)

    tasks = []
    for holder, priority in (("low-1", 0), ("low-2", 0), ("high", 5), ("mid", 1)):
        tasks.append(asyncio.create_task(wait(holder, priority)))
        await asyncio.sleep(0.01)
    assert alloc.line.waiting("gpu") == ["high", "mid", "low-1", "low-2"]
    for current in ("owner", "high", "mid", "low-1"):
        records[:] = []
        await alloc.release(current)
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    assert order == ["high", "mid", "low-1", "low-2"]
