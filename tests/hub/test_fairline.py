"""The fair line both spawners queue in: order, places, hand-off, nudges, giving up, per-user counts.

Pure: no engine, only asyncio.  The owner of the line (the allocator, the swarm gate) is played
by the test: it grants values, nudges, and answers the rechecks.
"""

from __future__ import annotations

import asyncio

import pytest

from gpuhub_spawner.hub.fairline import FairLine, NoUnitFree, OverLimit, Ticket


async def _nothing(ticket: Ticket) -> None:
    return None


def _join_all(line: FairLine, entries, places: dict[str, list[tuple[int, int]]]) -> dict[str, Ticket]:
    tickets = {}
    for holder, priority in entries:
        places[holder] = []
        tickets[holder] = line.join("gpu", holder, priority, owner=holder[0],
                                    on_position=lambda p, n, h=holder: places[h].append((p, n)))
    return tickets


@pytest.mark.parametrize(
    "entries, order",
    [
        ([("a1", 0), ("b1", 0), ("c1", 0)], ["a1", "b1", "c1"]),
        ([("a1", 0), ("b1", 0), ("h1", 5), ("m1", 1)], ["h1", "m1", "a1", "b1"]),
        ([("h1", 5), ("h2", 5), ("a1", 0), ("h3", 5)], ["h1", "h2", "h3", "a1"]),
    ],
    ids=["fifo", "priority-ahead", "fifo-within-priority"],
)
async def test_order_and_places(entries, order):
    line = FairLine()
    places: dict[str, list[tuple[int, int]]] = {}
    tickets = _join_all(line, entries, places)
    assert line.waiting("gpu") == order
    assert {h: p[-1] for h, p in places.items()} == {h: (i + 1, len(order)) for i, h in enumerate(order)}
    assert [line.position(tickets[h]) for h in order] == list(range(1, len(order) + 1))
    assert line.length("gpu") == len(order) and line.length("mig-1g.10gb") == 0
    assert line.lengths() == {"gpu": len(order)}


async def test_grant_goes_to_the_head_and_the_rest_move_up():
    line = FairLine()
    places: dict[str, list[tuple[int, int]]] = {}
    tickets = _join_all(line, [("a1", 0), ("b1", 0), ("c1", 0)], places)
    waits = {h: asyncio.create_task(line.wait(t, 30, _nothing, interval=30)) for h, t in tickets.items()}
    await asyncio.sleep(0)
    head = line.head("gpu")
    assert head is tickets["a1"]
    line.grant(head, "unit-0")
    assert await waits["a1"] == "unit-0"
    assert line.waiting("gpu") == ["b1", "c1"]
    assert places["b1"][-1] == (1, 2) and places["c1"][-1] == (2, 2)
    assert len(places["a1"]) == 3  # told once per move of the line, never after it was served
    for task in (waits["b1"], waits["c1"]):
        task.cancel()
    await asyncio.gather(waits["b1"], waits["c1"], return_exceptions=True)
    assert line.length("gpu") == 0 and line.head("gpu") is None


async def test_a_nudge_makes_the_waiter_look_again_at_once():
    line = FairLine()
    looked: list[str] = []
    free: list[str] = []

    async def recheck(ticket: Ticket) -> str | None:
        looked.append(ticket.holder)
        return free.pop() if free and line.head(ticket.pool) is ticket else None

    first = line.join("gpu", "a1")
    second = line.join("gpu", "b1")
    waits = [asyncio.create_task(line.wait(t, 30, recheck, interval=3600)) for t in (first, second)]
    await asyncio.sleep(0)
    free.append("kind-0")
    line.nudge()
    assert await asyncio.wait_for(waits[0], 5) == "kind-0"  # an hour's interval: only the nudge woke it
    assert sorted(looked) == ["a1", "b1"]  # everyone looked; only the head may take it
    assert not waits[1].done() and line.waiting("gpu") == ["b1"]
    line.nudge()
    await asyncio.sleep(0.01)
    assert looked.count("b1") == 2 and not waits[1].done()
    waits[1].cancel()
    await asyncio.gather(waits[1], return_exceptions=True)


async def test_recheck_runs_every_interval_and_time_out_says_the_place():
    line = FairLine()
    calls: list[str] = []

    async def recheck(ticket: Ticket) -> None:
        calls.append(ticket.holder)

    first = line.join("gpu", "a1")
    second = line.join("gpu", "b1")
    keep = asyncio.create_task(line.wait(first, 30, _nothing, interval=30))
    with pytest.raises(NoUnitFree) as info:
        await line.wait(second, 0.2, recheck, interval=0.05)
    assert info.value.pool == "gpu" and info.value.position == 2 and info.value.waited >= 0.2
    assert len(calls) >= 3
    assert line.waiting("gpu") == ["a1"]  # the one that gave up left the line
    keep.cancel()
    await asyncio.gather(keep, return_exceptions=True)
    assert line.length("gpu") == 0


@pytest.mark.parametrize("order", ["cancel-then-grant", "grant-then-cancel"])
async def test_a_value_handed_to_a_waiter_that_gives_up_is_given_back(order):
    line = FairLine()
    given_back: list[tuple[str, str]] = []
    ticket = line.join("gpu", "a1")
    task = asyncio.create_task(
        line.wait(ticket, 30, _nothing, interval=30,
                  on_abandon=lambda t: given_back.append((t.holder, t.granted.result())))
    )
    await asyncio.sleep(0)
    if order == "cancel-then-grant":
        task.cancel()
        line.grant(ticket, "unit-0")
    else:
        line.grant(ticket, "unit-0")
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert given_back == [("a1", "unit-0")]
    assert line.length("gpu") == 0


async def test_a_cancelled_waiter_is_skipped_and_gets_nothing():
    line = FairLine()
    given_back: list[str] = []
    first, second = line.join("gpu", "a1"), line.join("gpu", "b1")
    tasks = [asyncio.create_task(line.wait(t, 30, _nothing, 30, on_abandon=lambda t: given_back.append(t.holder)))
             for t in (first, second)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert first.granted.cancelled() and line.head("gpu") is second
    line.grant(line.head("gpu"), "unit-0")
    assert await tasks[1] == "unit-0" and given_back == []


async def test_counts_and_the_limit_per_user():
    line = FairLine()
    line.owners.update({"ann-a": "ann", "bob-a": "bob"})
    waiting = line.join("gpu", "ann-b", owner="ann")
    reads: list[bool] = []
    last_read = ["ann-a", "bob-a"]  # what the owner read a moment ago
    engine_now = list(last_read)  # what a fresh read finds

    async def admitted(fresh: bool) -> list[str]:
        reads.append(fresh)
        return list(engine_now if fresh else last_read)

    assert line.counts("ann", last_read) == (1, 1)
    assert line.counts("ann", last_read, exclude="ann-b") == (1, 0)
    assert line.counts("bob", last_read) == (1, 0)
    with pytest.raises(OverLimit) as info:
        await line.count_in("ann", "ann-c", 2, admitted)
    assert (info.value.limit, info.value.held, info.value.waiting) == (2, 1, 1)
    assert reads == [False, True]  # read again before refusing: a counted server may have gone
    assert "ann-c" not in line.owners
    engine_now.remove("ann-a")  # ann's first server ended since the last read
    reads.clear()
    await line.count_in("ann", "ann-c", 2, admitted)
    assert reads == [False, True] and line.owners["ann-c"] == "ann"
    # only waiting in line, none held: refused without a second read
    engine_now.clear()
    last_read.clear()
    reads.clear()
    with pytest.raises(OverLimit) as info:
        await line.count_in("ann", "ann-d", 1, admitted)
    assert (info.value.held, info.value.waiting) == (0, 1) and reads == [False]
    reads.clear()
    await line.count_in("ann", "ann-d", None, admitted)  # no limit: counted, nothing read
    assert line.owners["ann-d"] == "ann" and reads == []
    line.forget("ann-d")
    assert "ann-d" not in line.owners
    waiting.granted.cancel()  # a waiter that gave up is not counted any more
    assert line.counts("ann", engine_now) == (0, 0)
    line.leave(waiting)


# ---- fair share: less recent GPU use goes ahead within a priority ---------------------------


@pytest.mark.parametrize(
    "entries, order",
    [
        ([("a1", 0, 0.0), ("b1", 0, 0.0), ("c1", 0, 0.0)], ["a1", "b1", "c1"]),  # no history: FIFO
        ([("h1", 0, 900.0), ("l1", 0, 10.0), ("n1", 0, 0.0)], ["n1", "l1", "h1"]),  # lightest first
        ([("l1", 0, 10.0), ("h1", 5, 9000.0)], ["h1", "l1"]),  # priority before use
        ([("a1", 0, 50.0), ("b1", 0, 50.0), ("n1", 0, 0.0), ("c1", 0, 50.0)], ["n1", "a1", "b1", "c1"]),
    ],
    ids=["no-history-fifo", "lightest-first", "priority-first", "equal-use-fifo"],
)
async def test_fair_share_order(entries, order):
    line = FairLine()
    for holder, priority, use in entries:
        line.join("gpu", holder, priority, owner=holder, use=use)
    assert line.waiting("gpu") == order


async def test_why_ahead_names_priority_use_and_arrival():
    line = FairLine()
    line.join("gpu", "early", 0, use=100.0)
    line.join("gpu", "boss", 3, use=5000.0)
    line.join("gpu", "light", 0, use=1.0)
    line.join("gpu", "me", 0, use=100.0)
    assert line.waiting("gpu") == ["boss", "light", "early", "me"]
    ahead = line.why_ahead("gpu", "me")
    assert (ahead.higher_priority, ahead.less_use, ahead.earlier, ahead.own_use) == (1, 1, 1, 100.0)
    boss = line.why_ahead("gpu", "boss")
    assert (boss.higher_priority, boss.less_use, boss.earlier) == (0, 0, 0)  # nobody ahead
    assert line.why_ahead("gpu", "stranger") is None


async def test_a_use_given_as_a_callable_is_read_only_by_those_who_join_the_line():
    from gpuhub_spawner.hub.fairline import use_now

    reads = []

    async def read() -> float:
        reads.append(1)
        return 42.0

    assert await use_now(7) == 7.0 and not reads
    assert await use_now(read) == 42.0 and reads == [1]
