"""A burst of Starts shares reads of the swarm (SwarmGate.shared_view): table of who gets which read."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.hub.swarmgate import SwarmGate


class Manager:
    """Stands in for the swarm manager's answer: each read takes ``delay`` s and is numbered."""

    def __init__(self, delay: float = 0.05, fail: bool = False):
        self.delay, self.fail = delay, fail
        self.began: list[float] = []

    async def read(self) -> ClusterView:
        self.began.append(time.monotonic())
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("manager gone")
        view = ClusterView()
        view.read_number = len(self.began)  # type: ignore[attr-defined]
        return view


async def burst(gate: SwarmGate, manager: Manager, max_age: float, n: int = 30, spread: float = 0.0):
    async def caller(i: int):
        await asyncio.sleep(spread * i / n)
        asked = time.monotonic()
        view = await gate.shared_view(manager.read, max_age)
        return asked, view.read_number

    return await asyncio.gather(*(caller(i) for i in range(n)))


@pytest.mark.parametrize("spread", [0.0, 0.2])
async def test_callers_wanting_a_read_begun_after_they_asked_get_one_and_share_it(spread):
    gate, manager = SwarmGate(), Manager()
    answers = await burst(gate, manager, max_age=0.0, spread=spread)
    for asked, number in answers:
        assert manager.began[number - 1] >= asked  # the read they got began after they asked
    # thirty callers, a few reads: each read serves everyone who asked while the one before ran
    assert len(manager.began) <= (2 if spread == 0.0 else 2 + int(spread / manager.delay) + 1)
    assert len(manager.began) < len(answers)


async def test_a_recent_enough_read_in_flight_or_done_is_shared():
    gate, manager = SwarmGate(), Manager(delay=0.1)
    first = asyncio.ensure_future(gate.shared_view(manager.read, 0.5))
    await asyncio.sleep(0.02)
    joined = await gate.shared_view(manager.read, 0.5)  # the read in flight began 20 ms ago
    assert (await first).read_number == joined.read_number == 1
    assert (await gate.shared_view(manager.read, 0.5)).read_number == 1  # the finished read, still young
    assert (await gate.shared_view(manager.read, 0.0)).read_number == 2  # not when a fresh one is asked
    assert len(manager.began) == 2


async def test_a_failed_read_fails_its_callers_and_the_next_caller_reads_again():
    gate, manager = SwarmGate(), Manager(fail=True)
    results = await asyncio.gather(*(gate.shared_view(manager.read, 0.0) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    manager.fail = False
    assert (await gate.shared_view(manager.read, 0.0)).read_number == len(manager.began)


async def test_a_caller_cancelled_while_waiting_does_not_cancel_the_read_for_the_others():
    gate, manager = SwarmGate(), Manager(delay=0.1)
    impatient = asyncio.ensure_future(gate.shared_view(manager.read, 0.0))
    patient = asyncio.ensure_future(gate.shared_view(manager.read, 0.0))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert (await patient).read_number == 1
