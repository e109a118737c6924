"""One spawn's wait in a pool's line: the "likely wait" sentence of its queue message, and a log
line comparing what it was told with what it waited (the rule: :mod:`gpuhub_spawner.core.waits`).

The pool's holds are read from the usage ledger in a worker thread when the spawn first hears its
place, and again when the reading is older than :data:`FRESH` seconds; the message goes out at
once without the sentence, and again with it when the reading arrives.  A ledger that cannot be
read gives no sentence at all (the place in line is still told): an estimate is never invented.

What other groups keep of the pool from this spawn (their unused guaranteed shares, reservations
in or near their grace period: ``kept``) is read with the holds, on the hub's own thread (the
groups are in its database); unreadable groups give the estimate without them.

Each spawn that waited logs one ``wait-estimate`` line when its wait ends (a unit, or refused),
so the estimates' error can be measured from the hub's log (the workshop-day test does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from gpuhub_spawner.core import waits
from gpuhub_spawner.storage.ledger import PoolHolds, WaitRecord

#: used when no logger is given (the spawners give theirs: JupyterHub's, which the hub's log shows)
default_log = logging.getLogger("gpuhub.waits")

#: seconds a reading of the pool's holds is used before another is taken
FRESH = 30.0


class LineWait:
    """``load()`` reads the pool's holds (None: unreadable); ``changed()`` re-sends the message."""

    def __init__(self, who: str, pool: str, max_wait: float,
                 load: Callable[[], Awaitable[PoolHolds | None]], changed: Callable[[], None],
                 log: logging.Logger | logging.LoggerAdapter = default_log,
                 keep: Callable[[WaitRecord], None] = lambda record: None,
                 kept: Callable[[], tuple[int, list[waits.Keep]]] | None = None):
        self.who, self.pool, self.max_wait, self.log, self.keep = who, pool, max_wait, log, keep
        self._load, self._changed, self._kept = load, changed, kept
        #: (when read, units free now, what others keep) from ``kept``
        self._keeps: tuple[float, int, list[waits.Keep]] = (0.0, 0, [])
        self._holds: PoolHolds | None = None
        self._read_at = float("-inf")
        self._task: asyncio.Task | None = None
        self.joined_at: float | None = None
        #: (place, estimate) when the spawn was first given a sentence
        self.first: tuple[int, waits.Estimate | None] | None = None

    def sentence(self, position: int) -> str:
        """The likely-wait sentence for ``position`` ("" until the holds are read)."""
        if self.joined_at is None:
            self.joined_at = time.monotonic()
            self.joined_wall = datetime.now(timezone.utc)
        if time.monotonic() - self._read_at > FRESH and (self._task is None or self._task.done()):
            self._read_keeps()
            self._task = asyncio.get_running_loop().create_task(self._read())
        if self._holds is None:
            return ""
        read_at, free, keeps = self._keeps
        since = time.monotonic() - read_at
        keeps = [waits.Keep(k.units, k.start - since, k.until - since) for k in keeps]
        est = waits.estimate(position, self._holdings(), self._holds.past, keeps, free)
        if self.first is None:
            self.first = (position, est)
        return waits.wait_text(est, self.max_wait)

    def _holdings(self) -> list[waits.Holding]:
        now, wall = datetime.now(timezone.utc), time.time()
        holds = self._holds
        return [waits.Holding(max(0.0, (now - started).total_seconds()),
                              holds.culls[(user, server)] - wall if (user, server) in holds.culls else None)
                for user, server, started in holds.open]

    def _read_keeps(self) -> None:
        if self._kept is None:
            return
        try:
            free, keeps = self._kept()
        except Exception as e:  # noqa: BLE001 - the estimate without them rather than a failed spawn
            self.log.warning("Could not read what groups keep of pool %s for a wait estimate: %s", self.pool, e)
            return
        self._keeps = (time.monotonic(), free, keeps)

    async def _read(self) -> None:
        self._read_at = time.monotonic()
        try:
            holds = await self._load()
        except Exception as e:  # noqa: BLE001 - no sentence rather than a failed spawn
            self.log.warning("Could not read the holds of pool %s for a wait estimate: %s", self.pool, e)
            return
        if holds is not None:
            fresh = self._holds is None
            self._holds = holds
            if fresh:
                self._changed()

    def over(self, outcome: str) -> None:
        """The wait ended (``outcome``: "unit", "refused" or "cancelled"): log what was told against
        what happened, and ``keep`` it (the usage database's record of waits)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.joined_at is None:
            return  # never waited in line
        waited = time.monotonic() - self.joined_at
        place, est = self.first if self.first is not None else (0, None)
        told = "none" if est is None else f"{est.low:.0f}-{'' if est.high is None else f'{est.high:.0f}'}"
        self.log.info("wait-estimate user=%s pool=%s place=%d told=%s holds=%d waited=%.0f outcome=%s kept=%s",
                      self.who, self.pool, place, told, est.holds if est else 0, waited, outcome,
                      "yes" if est is not None and est.kept else "no")
        user, _, server = self.who.partition("/")
        self.keep(WaitRecord(user, server, self.pool, self.joined_wall, self.joined_wall + timedelta(seconds=waited),
                             outcome, place, est.low if est else None, est.high if est else None,
                             est.holds if est else 0))
