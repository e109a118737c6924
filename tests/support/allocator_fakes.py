"""A FAKE engine for the allocator's tests: the labelled objects a Docker engine would list,
as an in-memory list each test controls, and what a spawner does around a reservation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gpuhub_spawner.core import inventory as inv
from gpuhub_spawner.core.inventory import Inventory, Unit
from gpuhub_spawner.hub.allocator import Allocator, HeldRecord


def gpu(n: int) -> str:
    return f"GPU-00000000-0000-4000-8000-{n:012d}"


def make_inventory(whole: int = 0, replicas: tuple[int, ...] = ()) -> Inventory:
    gpus = [{"uuid": gpu(i)} for i in range(whole)]
    gpus += [{"uuid": gpu(100 + i), "replicas": n} for i, n in enumerate(replicas)]
    return Inventory(tuple(inv.units_from_gpus(gpus)))


class FakeEngine:
    """The labelled objects an engine would list; tests add and remove them."""

    def __init__(self, records: list[HeldRecord] | None = None):
        self.records = list(records or [])
        self.removed: list[HeldRecord] = []
        self.list_calls = 0

    async def list_held(self) -> list[HeldRecord]:
        self.list_calls += 1
        return list(self.records)

    async def remove(self, record: HeldRecord) -> None:
        self.removed.append(record)
        self.records.remove(record)

    def run(self, holder: str, unit: Unit, state: str = "running", group: str = "") -> None:
        self.records.append(HeldRecord(holder, unit.id, state, group=group))

    def vanish(self, holder: str) -> None:
        self.records = [r for r in self.records if r.holder != holder]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let other tasks run until ``condition()`` holds (fails the test after ``timeout``)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


async def spawn(alloc: Allocator, engine: FakeEngine, holder: str, pool: str, **kw) -> Unit:
    """What the spawner does: reserve, then create the labelled object inside the reservation
    (labelled with the group its unit counts for, when a ``share`` is given)."""
    share = kw.get("share")
    async with alloc.reserve(pool, holder, **kw) as unit:
        await asyncio.sleep(0)
        engine.run(holder, unit, group=share.group if share is not None else "")
    return unit
