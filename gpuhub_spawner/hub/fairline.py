"""The one fair line in front of a pool of GPU units, shared by both spawners.

A spawn that finds its pool full waits here: per pool, a higher ``priority`` goes ahead; within a
priority, less recent GPU ``use`` goes ahead (fair share over time, :mod:`gpuhub_spawner.core.fairshare`:
the spawners hand each waiter its user's decayed use, 0 when fair share is off); equal ones keep
their arrival order. Every waiter is told its place ("#k of n in line") whenever the line moves,
and :meth:`FairLine.why_ahead` says why those ahead of it are.  The line does not know what is free; its owner does, and either
hands the first live waiter that may take a unit a value (:meth:`FairLine.first`: a group's
guaranteed share or reservation may hold some back and let others go first, core/shares.py;
:meth:`FairLine.grant`: the single-host allocator gives the unit itself) or nudges the waiters to look again (:meth:`FairLine.nudge`: the swarm gate, which
can only re-read the swarm).  A waiter that gives up (it timed out, or its spawn was cancelled
or stopped) leaves at once, and a value handed to it as it gave up is passed back to the owner.

The line also keeps whose each holder is, so ``max_gpu_units`` counts one user's servers that
hold a unit, are being given one, or wait in line, in the same step as the admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.shares import PoolShares

log = logging.getLogger(__name__)

OnPosition = Callable[[int, int], None]


class NoUnitFree(Exception):
    """The pool had no free unit (``waited`` seconds in line, ``position`` at the end)."""

    def __init__(self, pool: str, waited: float = 0.0, position: int | None = None):
        self.pool = pool
        self.waited = waited
        self.position = position
        super().__init__(pool)


class OverLimit(Exception):
    """``owner`` already holds (``held``) or waits in line for (``waiting``) ``limit`` units."""

    def __init__(self, owner: str, limit: int, held: int, waiting: int):
        self.owner = owner
        self.limit = limit
        self.held = held
        self.waiting = waiting
        super().__init__(owner)


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class Ticket:
    """One spawn's place in line; ``granted`` resolves with what its owner hands it."""

    pool: str
    holder: str
    priority: int = 0
    owner: str = ""
    on_position: OnPosition | None = None
    use: float = 0.0  # the owner's decayed GPU-seconds (fair share), when it joined
    #: the groups' shares of the pool and the group this spawn counts for (None: no shares)
    share: PoolShares | None = None
    #: why it may not take a free unit, as last judged (core/shares.py: "kept", "burst"; "" full)
    held_back: str = ""
    #: when it joined (epoch seconds): how long a reservation's member has waited (hub/lines.py)
    joined: float = field(default_factory=time.time)
    granted: asyncio.Future = field(default_factory=_future)
    nudged: asyncio.Future = field(default_factory=_future)

    @property
    def live(self) -> bool:
        """Still waiting: not handed anything, not given up."""
        return not self.granted.done()


@dataclass(frozen=True)
class Ahead:
    """Why the waiters ahead of one are ahead: a higher priority, less recent GPU use, or they
    asked first (with the same priority and no less use)."""

    higher_priority: int = 0
    less_use: int = 0
    earlier: int = 0
    own_use: float = 0.0  # the waiter's own decayed use, as it joined


#: a waiter's decayed use, or how to read it (read only if it has to join a line)
Use = float | Callable[[], Awaitable[float]]


async def use_now(use: Use) -> float:
    return float(await use()) if callable(use) else float(use)


#: the owner's look at a ticket that was nudged or waited a while: a value to hand it, or None
Recheck = Callable[[Ticket], Awaitable[Any]]
#: the holders that count against their user: hold a unit, or were let through and await one
Admitted = Callable[[bool], Awaitable[Iterable[str]]]


class FairLine:
    """Per-pool FIFO lines (by priority) and the per-user count of holders; not thread-safe."""

    def __init__(self) -> None:
        self._lines: dict[str, list[Ticket]] = {}
        #: holder -> user whose ``max_gpu_units`` its unit (held, in flight or awaited) counts against
        self.owners: dict[str, str] = {}
        #: holder -> the group whose share of the pool its unit counts for (core/shares.py)
        self.groups: dict[str, str] = {}

    # ---- the line ----------------------------------------------------------------------

    def join(self, pool: str, holder: str, priority: int = 0, owner: str = "",
             on_position: OnPosition | None = None, use: float = 0.0,
             share: PoolShares | None = None, held_back: str = "") -> Ticket:
        """Queue ``holder``: behind everyone of higher priority, and of equal priority with no
        more recent ``use`` than its own."""
        ticket = Ticket(pool, holder, priority, owner, on_position, use, share, held_back)
        line = self._lines.setdefault(pool, [])
        index = next((i for i, t in enumerate(line) if (-t.priority, t.use) > (-priority, use)), len(line))
        line.insert(index, ticket)
        self._notify(pool)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        line = self._lines.get(ticket.pool, [])
        if ticket in line:
            line.remove(ticket)
            self._notify(ticket.pool)

    def head(self, pool: str) -> Ticket | None:
        """The first waiter of ``pool`` that still waits."""
        return next((t for t in self._lines.get(pool, ()) if t.live), None)

    def first(self, pool: str, held_back: Callable[[Ticket], str | None],
              served_first: Callable[[Ticket], bool] = lambda ticket: False) -> Ticket | None:
        """The first live waiter of ``pool`` that may take a unit now: ``held_back(ticket)`` is
        None for it (each waiter passed over keeps the reason it was given, for its message);
        among those, one that ``served_first`` (a group's guarantee or reservation) before the rest."""
        found = None
        for ticket in self._lines.get(pool, ()):
            if ticket.live:
                reason = held_back(ticket)
                if reason is not None:
                    ticket.held_back = reason
                elif served_first(ticket):
                    return ticket
                elif found is None:
                    found = ticket
        return found

    def held_back(self, pool: str, holder: str) -> tuple[str, PoolShares | None]:
        """Why ``holder``'s spawn waits though units may be free (its reason, its shares)."""
        ticket = next((t for t in self._lines.get(pool, ()) if t.holder == holder), None)
        return (ticket.held_back, ticket.share) if ticket is not None else ("", None)

    def grant(self, ticket: Ticket, value: Any) -> None:
        """Hand ``value`` to ``ticket`` (it leaves the line; the others move up)."""
        ticket.granted.set_result(value)
        self.leave(ticket)

    def nudge(self) -> None:
        """Wake every waiter to look again (something may have come free)."""
        for line in self._lines.values():
            for ticket in line:
                if not ticket.nudged.done():
                    ticket.nudged.set_result(None)

    def position(self, ticket: Ticket) -> int | None:
        line = self._lines.get(ticket.pool, [])
        return line.index(ticket) + 1 if ticket in line else None

    def why_ahead(self, pool: str, holder: str) -> Ahead | None:
        """Why each waiter ahead of ``holder`` in ``pool``'s line is there (None: not in line)."""
        line = self._lines.get(pool, [])
        mine = next((i for i, t in enumerate(line) if t.holder == holder), None)
        if mine is None:
            return None
        me, counts = line[mine], {"higher_priority": 0, "less_use": 0, "earlier": 0}
        for t in line[:mine]:
            key = "higher_priority" if t.priority > me.priority else "less_use" if t.use < me.use else "earlier"
            counts[key] += 1
        return Ahead(**counts, own_use=me.use)

    def length(self, pool: str) -> int:
        return len(self._lines.get(pool, ()))

    def lengths(self) -> dict[str, int]:
        """pool -> spawns waiting in line now (the ``gpuhub_queue_length`` gauge)."""
        return {pool: len(line) for pool, line in self._lines.items()}

    def tickets(self) -> dict[str, list[Ticket]]:
        """Every line's live waiters, by line key (a pool, or one node's line of it), first first."""
        return {key: [t for t in line if t.live] for key, line in self._lines.items()}

    def waiting(self, pool: str) -> list[str]:
        """The holders waiting for ``pool``, first first."""
        return [t.holder for t in self._lines.get(pool, ())]

    def _notify(self, pool: str) -> None:
        line = self._lines.get(pool, [])
        for i, ticket in enumerate(line):
            if ticket.on_position is not None and ticket.live:
                try:
                    ticket.on_position(i + 1, len(line))
                except Exception:  # noqa: BLE001 - progress only; the line must move on
                    log.exception("position callback failed for %s", ticket.holder)

    async def wait(self, ticket: Ticket, max_wait: float, recheck: Recheck, interval: float,
                   on_abandon: Callable[[Ticket], None] | None = None) -> Any:
        """Wait until ``ticket`` is handed a value; :class:`NoUnitFree` after ``max_wait`` s.

        Every ``interval`` seconds, or when nudged, ``recheck(ticket)`` looks again and may
        return the value to hand it.  If the wait ends otherwise (time out, cancellation) just
        as a value arrives, ``on_abandon(ticket)`` gives ``ticket.granted``'s value back.
        """
        start = time.monotonic()
        try:
            while ticket.live:
                remaining = start + max_wait - time.monotonic()
                if remaining <= 0:
                    raise NoUnitFree(ticket.pool, time.monotonic() - start, self.position(ticket))
                # asyncio.wait, not wait_for: it never swallows a cancellation that arrives
                # together with the value (wait_for does on Python < 3.12)
                await asyncio.wait({ticket.granted, ticket.nudged}, timeout=min(remaining, interval),
                                   return_when=asyncio.FIRST_COMPLETED)
                if ticket.nudged.done():
                    ticket.nudged = _future()
                if ticket.live:
                    value = await recheck(ticket)
                    if value is not None and ticket.live:
                        self.grant(ticket, value)
            return ticket.granted.result()
        except BaseException:
            granted = ticket.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                if on_abandon is not None:
                    on_abandon(ticket)
            else:
                granted.cancel()
            raise
        finally:
            self.leave(ticket)

    # ---- per-user counts (max_gpu_units) ---------------------------------------------

    def counts(self, owner: str, admitted: Iterable[str], exclude: str = "") -> tuple[int, int]:
        """(holders in ``admitted``, spawns in line) of ``owner``, not counting ``exclude``."""
        held = {h for h in admitted if h != exclude and self.owners.get(h) == owner}
        waiting = sum(
            1 for line in self._lines.values() for t in line
            if t.owner == owner and t.holder != exclude and t.live
        )
        return len(held), waiting

    async def count_in(self, owner: str, holder: str, max_units: int | None, admitted: Admitted) -> None:
        """Count ``holder`` as ``owner``'s, or raise :class:`OverLimit` if that would pass ``max_units``.

        ``admitted(fresh)`` lists the holders that count; with ``fresh`` True it reads the engine
        again, which is done before refusing, since a server counted may have just gone.
        """
        if owner and max_units is not None:
            held, waiting = self.counts(owner, await admitted(False), holder)
            if held + waiting >= max_units and held:
                held, waiting = self.counts(owner, await admitted(True), holder)
            if held + waiting >= max_units:
                raise OverLimit(owner, max_units, held, waiting)
        if owner:
            self.owners[holder] = owner

    def forget(self, holder: str) -> None:
        """``holder`` holds nothing and waits for nothing any more."""
        self.owners.pop(holder, None)
        self.groups.pop(holder, None)
