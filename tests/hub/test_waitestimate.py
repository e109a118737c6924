"""One spawn's likely-wait sentence (gpuhub_spawner/hub/waitestimate.py): read once, re-told when
read, never invented when the ledger cannot be read; one log line per wait."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone

from gpuhub_spawner.hub.waitestimate import LineWait
from gpuhub_spawner.storage.ledger import PoolHolds

NOW = datetime.now(timezone.utc)
PAST = [m * 600.0 for m in range(1, 11)]  # 10..100 minutes


def _wait(load, told, caplog=None):
    return LineWait("ann", "gpu", 300, load, lambda: told.append("again"), logging.getLogger("test.waits"))


async def test_the_sentence_comes_once_the_holds_are_read_and_the_message_is_sent_again():
    told: list[str] = []
    reads = []

    async def load():
        reads.append(1)
        return PoolHolds([("bob", "", NOW)], PAST, {("bob", ""): time.time() + 120})

    wait = _wait(load, told)
    assert wait.sentence(1) == ""  # not read yet: the place is told without it
    await asyncio.sleep(0.05)
    assert told == ["again"]
    assert wait.sentence(1) == "Likely wait: about 2 minutes (from 10 recent servers' hold times)."  # bob's cull
    assert wait.sentence(2).startswith("Likely wait: about ") and len(reads) == 1  # one read while fresh


async def test_an_unreadable_ledger_gives_no_sentence_and_says_why_in_the_log(caplog):
    told: list[str] = []

    async def load():
        raise OSError("database gone")

    wait = _wait(load, told)
    with caplog.at_level(logging.WARNING, "test.waits"):
        assert wait.sentence(1) == ""
        await asyncio.sleep(0.05)
    assert wait.sentence(1) == "" and told == []
    assert "Could not read the holds of pool gpu for a wait estimate: database gone" in caplog.text


async def test_each_wait_is_logged_once_with_what_it_was_told(caplog):
    async def load():
        return PoolHolds([("bob", "", NOW - timedelta(minutes=5))], PAST, {})

    wait = _wait(load, [])
    wait.sentence(3)
    await asyncio.sleep(0.05)
    wait.sentence(3)
    wait.sentence(1)  # the place moved up; the first estimate is the one measured
    with caplog.at_level(logging.INFO, "test.waits"):
        wait.over("unit")
    (line,) = [r.getMessage() for r in caplog.records if "wait-estimate" in r.getMessage()]
    assert line.startswith("wait-estimate user=ann pool=gpu place=3 told=")
    assert line.endswith("holds=10 waited=0 outcome=unit kept=no")


async def test_units_kept_for_a_reservation_are_read_with_the_holds_and_lengthen_the_wait(caplog):
    """The pool's one unit is free but kept for a course's reservation for 4 more minutes; bob
    holds the other and is culled in 9: the place's wait is the reservation's lending."""
    from gpuhub_spawner.core.waits import Keep

    async def load():
        return PoolHolds([("bob", "", NOW)], PAST, {("bob", ""): time.time() + 540})

    asked = []

    def kept():
        asked.append(1)
        return 1, [Keep(1, -360.0, 240.0)]

    wait = LineWait("ann", "gpu", 600, load, lambda: None, logging.getLogger("test.waits"), kept=kept)
    wait.sentence(1)
    await asyncio.sleep(0.05)
    assert wait.sentence(1) == ("Likely wait: about 4 minutes (from 10 recent servers' hold times and the units "
                                "kept for other groups' reservations and guaranteed shares).")
    # second in line: bob's cull in 9 minutes
    assert wait.sentence(2).startswith("Likely wait: about 9 minutes") and asked == [1]  # read once while fresh
    with caplog.at_level(logging.INFO, "test.waits"):
        wait.over("unit")
    assert "outcome=unit kept=yes" in caplog.text


async def test_groups_that_cannot_be_read_give_the_estimate_without_them(caplog):
    async def load():
        return PoolHolds([("bob", "", NOW)], PAST, {("bob", ""): time.time() + 120})

    def kept():
        raise ValueError("gpu_share of group 'lab' is not JSON")

    wait = LineWait("ann", "gpu", 600, load, lambda: None, logging.getLogger("test.waits"), kept=kept)
    with caplog.at_level(logging.WARNING, "test.waits"):
        wait.sentence(1)
        await asyncio.sleep(0.05)
    assert wait.sentence(1) == "Likely wait: about 2 minutes (from 10 recent servers' hold times)."
    assert "Could not read what groups keep of pool gpu for a wait estimate: gpu_share of group 'lab'" in caplog.text


async def test_a_spawn_that_never_waited_logs_nothing(caplog):
    async def load():
        return None

    with caplog.at_level(logging.INFO, "test.waits"):
        _wait(load, []).over("unit")
    assert "wait-estimate" not in caplog.text


async def test_a_burst_of_waiters_shares_one_read_of_the_ledger(tmp_path, monkeypatch):
    from gpuhub_spawner.hub.state import HubState
    from gpuhub_spawner.hub.usage import UsageRecords
    from gpuhub_spawner.storage.ledger import UsageLedger

    reads = []
    real = UsageLedger.pool_holds
    monkeypatch.setattr(UsageLedger, "pool_holds", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    spawner = UsageRecords()
    spawner.usage_db_url = f"sqlite:///{tmp_path / 'usage.sqlite'}"
    spawner.hub_state = HubState.for_hub("t-waits-share")
    got = await asyncio.gather(*(spawner.pool_holds("gpu") for _ in range(20)))
    assert len(reads) == 1 and all(g == got[0] for g in got) and got[0].past == []
    await asyncio.gather(spawner.pool_holds("other"), spawner.pool_holds("gpu", fresh=0))
    assert len(reads) == 3  # another pool, and a read older than asked for, read again
