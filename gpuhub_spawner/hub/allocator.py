"""Hand out GPU units so that no unit is ever given to two servers.

Two layers:

- :class:`Ledger` is pure bookkeeping: which unit each holder has, and which units of each
  pool are free, in O(1) per decision however large the inventory.
- :class:`Allocator` adds the concurrency rules for one Docker engine: choose-and-create
  runs under one lock, the fair line per pool (:mod:`gpuhub_spawner.hub.fairline`, shared
  with the swarm gate) with a bounded wait, and the container labels on the engine are the
  truth (the held set is rebuilt from them at start and re-read whenever a pool looks empty).

A *holder* is the name of the container (or swarm service) that holds the unit: unique per
user and server, and written in the object's labels.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gpuhub_spawner.core.inventory import Inventory, Unit, spread_order
from gpuhub_spawner.core.shares import FULL, PoolShares
from gpuhub_spawner.hub.fairline import FairLine, NoUnitFree, OnPosition, OverLimit, Ticket, Use, use_now

__all__ = ["Allocator", "HeldRecord", "Ledger", "NoUnitFree", "OverLimit", "StillHeld"]

log = logging.getLogger(__name__)

#: Object states that hold a unit.  "created" covers the moment between create and start.
HOLDING_STATES = frozenset({"running", "created", "restarting", "paused"})


class _UnitPool:
    """Free units of one pool as a FIFO of ids with lazy deletion."""

    def __init__(self, units: Iterable[Unit]):
        ordered = spread_order(units)
        self.size = len(ordered)
        self._queue: deque[str] = deque(u.id for u in ordered)
        self._free: set[str] = set(self._queue)

    def take(self) -> str | None:
        while self._queue:
            unit_id = self._queue.popleft()
            if unit_id in self._free:
                self._free.discard(unit_id)
                return unit_id
        return None

    def remove(self, unit_id: str) -> None:
        self._free.discard(unit_id)

    def put(self, unit_id: str) -> None:
        if unit_id not in self._free:
            self._free.add(unit_id)
            self._queue.append(unit_id)
            if len(self._queue) > 2 * self.size + 16:
                self.compact()

    def compact(self) -> None:
        """Drop queue entries of units that are no longer free (left by remove())."""
        seen: set[str] = set()
        kept = deque()
        for unit_id in self._queue:
            if unit_id in self._free and unit_id not in seen:
                seen.add(unit_id)
                kept.append(unit_id)
        self._queue = kept

    @property
    def free(self) -> int:
        return len(self._free)


class Ledger:
    """Pure record of who holds which unit."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._pools = {name: _UnitPool(units) for name, units in inventory.pools.items()}
        self._holder_of: dict[str, str] = {}  # unit id -> holder
        self._unit_of: dict[str, str] = {}  # holder -> unit id

    def take(self, pool: str, holder: str) -> Unit | None:
        """Give ``holder`` a free unit of ``pool``, or None when the pool is empty."""
        if holder in self._unit_of:
            raise ValueError(f"{holder} already holds {self._unit_of[holder]}")
        unit_pool = self._pools.get(pool)
        unit_id = unit_pool.take() if unit_pool else None
        if unit_id is None:
            return None
        self._bind(unit_id, holder)
        return self.inventory.by_id[unit_id]

    def hold(self, unit_id: str, holder: str) -> bool:
        """Record that ``holder`` holds ``unit_id``; False if someone else already does."""
        unit = self.inventory.by_id.get(unit_id)
        if unit is None:
            return False
        current = self._holder_of.get(unit_id)
        if current is not None:
            return current == holder
        if holder in self._unit_of:
            self.release(holder)
        self._pools[unit.pool].remove(unit_id)
        self._bind(unit_id, holder)
        return True

    def release(self, holder: str) -> Unit | None:
        """Free the unit ``holder`` holds; returns it, or None if it held none."""
        unit_id = self._unit_of.pop(holder, None)
        if unit_id is None:
            return None
        del self._holder_of[unit_id]
        unit = self.inventory.by_id[unit_id]
        self._pools[unit.pool].put(unit_id)
        return unit

    def _bind(self, unit_id: str, holder: str) -> None:
        self._holder_of[unit_id] = holder
        self._unit_of[holder] = unit_id

    def unit_of(self, holder: str) -> Unit | None:
        unit_id = self._unit_of.get(holder)
        return self.inventory.by_id[unit_id] if unit_id else None

    def holders(self) -> dict[str, str]:
        """holder -> unit id, a copy."""
        return dict(self._unit_of)

    def compact(self) -> None:
        """After many hold() calls (a rebuild from labels), keep the next take() O(1)."""
        for unit_pool in self._pools.values():
            unit_pool.compact()

    def free_count(self, pool: str) -> int:
        unit_pool = self._pools.get(pool)
        return unit_pool.free if unit_pool else 0

    def free_counts(self) -> dict[str, int]:
        return {name: p.free for name, p in self._pools.items()}


@dataclass(frozen=True)
class HeldRecord:
    """What the engine says about one labelled object."""

    holder: str
    unit_id: str
    state: str
    object_id: str = ""
    ours: bool = True  # created by this hub (same hub id label)
    user: str = ""  # the user label: whose quota the unit counts against
    group: str = ""  # the share-group label: whose guaranteed share it counts for (core/shares.py)


class StillHeld(Exception):
    """``holder``'s previous object still exists on the engine and holds ``unit_id``."""

    def __init__(self, holder: str, unit_id: str):
        self.holder = holder
        self.unit_id = unit_id
        super().__init__(holder)


ListHeld = Callable[[], Awaitable[list[HeldRecord]]]
RemoveObject = Callable[[HeldRecord], Awaitable[None]]


class Allocator:
    """Allocation for one engine: lock, the fair line, and sync with the labels."""

    def __init__(
        self,
        inventory: Inventory,
        list_held: ListHeld,
        remove_stale: RemoveObject | None = None,
        resync_interval: float = 5.0,
    ):
        self.inventory = inventory
        self.ledger = Ledger(inventory)
        self._list_held = list_held
        self._remove_stale = remove_stale
        self.resync_interval = resync_interval
        self.lock = asyncio.Lock()
        self.line = FairLine()
        self._pending: set[str] = set()  # handed a unit, container not created yet
        self._synced = False

    # ---- sync with the engine ------------------------------------------------------

    async def ensure_synced(self) -> None:
        if not self._synced:
            async with self.lock:
                if not self._synced:
                    await self._sync_locked(startup=True)
                    self._synced = True

    async def _sync_locked(self, startup: bool = False) -> None:
        """Make the ledger match the engine's labels (caller holds the lock).

        At start-up only running objects hold a unit: anything else of ours is left over from
        a spawn the hub did not finish, and is removed.  Later, "created" holds too (a spawn
        between create and start).
        """
        records = await self._list_held()
        seen: set[str] = set()
        for rec in records:
            holding = rec.state == "running" if startup else rec.state in HOLDING_STATES
            if not holding:
                if startup and rec.ours:
                    await self._remove_left_over(rec)
                continue
            if rec.user and rec.ours:  # another hub's users are not ours to count
                self.line.owners[rec.holder] = rec.user
            if rec.ours and rec.holder not in self._pending:
                self.line.groups[rec.holder] = rec.group
            if rec.unit_id not in self.inventory.by_id:
                log.warning("%s holds unit %s, which is not in the inventory", rec.holder, rec.unit_id)
                continue
            seen.add(rec.holder)
            # a pending holder is reserved and being (re)created: its new unit is in the
            # ledger, and this may be the old object it is about to remove
            if rec.holder not in self._pending and not self.ledger.hold(rec.unit_id, rec.holder):
                log.error(
                    "Unit %s is labelled on %s but already held by another server; "
                    "leaving it with its first holder",
                    rec.unit_id,
                    rec.holder,
                )
        if startup:
            self.ledger.compact()
        for holder in list(self.ledger.holders()):
            if holder not in seen and holder not in self._pending:
                unit = self.ledger.release(holder)
                log.info("%s is gone; unit %s is free again", holder, unit.id if unit else "?")
                if unit is not None:
                    self._hand_off(unit)

    async def _remove_left_over(self, rec: HeldRecord) -> None:
        if self._remove_stale is None:
            return
        log.info("Removing %s left %s by a spawn that did not finish", rec.holder, rec.state)
        try:
            await self._remove_stale(rec)
        except Exception as e:  # noqa: BLE001 - one bad object must not stop the hub
            log.warning("Could not remove stale %s: %s", rec.holder, e)

    # ---- reserve / release ---------------------------------------------------------

    @asynccontextmanager
    async def reserve(
        self,
        pool: str,
        holder: str,
        max_wait: float = 0.0,
        on_position: OnPosition | None = None,
        priority: int = 0,
        owner: str = "",
        max_units: int | None = None,
        use: Use = 0.0,
        share: PoolShares | None = None,
    ) -> AsyncIterator[Unit]:
        """Reserve a unit of ``pool`` for ``holder``; the body creates the object.

        The unit is marked held before the body runs, and ``holder`` stays *pending* until
        the body ends, so a re-read of the engine labels never frees a unit whose object is
        still being created: choose+create is atomic without serialising the creates
        themselves.  If the body raises (or is cancelled), the unit is released.  Raises
        :class:`NoUnitFree` when no unit comes free within ``max_wait`` seconds.  In line, a
        higher ``priority`` goes ahead of lower ones, then less recent GPU ``use`` (fair share; a
        callable is read only when the holder has to join the line); equal ones keep their
        arrival order.

        ``owner`` (the user) may hold at most ``max_units`` units, counting those held, those
        reserved and those waited for in line by the owner's other holders, checked under the
        lock together with the reservation: :class:`OverLimit` otherwise.  If ``holder``
        already holds a unit whose object still exists on the engine, :class:`StillHeld`.
        ``share`` (the groups' guaranteed shares and bursts of the pool, core/shares.py) may keep
        a free unit from it: it then waits in line for one it may take.
        """
        await self.ensure_synced()
        unit = await self._take_or_wait(pool, holder, max_wait, on_position, priority, owner, max_units, use,
                                        share)
        self._pending.add(holder)
        try:
            yield unit
        except BaseException:
            self._release_now(holder)
            raise
        finally:
            self._pending.discard(holder)

    async def _take_or_wait(
        self,
        pool: str,
        holder: str,
        max_wait: float,
        on_position: OnPosition | None,
        priority: int = 0,
        owner: str = "",
        max_units: int | None = None,
        use: Use = 0.0,
        share: PoolShares | None = None,
    ) -> Unit:
        async with self.lock:
            await self._drop_old_unit_locked(holder)
            await self.line.count_in(owner, holder, max_units, self._admitted_locked)
            self.line.groups[holder] = share.group if share is not None else ""
            known = pool in self.inventory.pools
            unit = self._take_if_first(pool, holder, share)
            if unit is None and known and not self.line.length(pool):
                await self._sync_locked()  # the engine may have freed units behind our back
                unit = self._take_if_first(pool, holder, share)
            if unit is not None:
                return unit
            if max_wait <= 0 or not known:
                raise NoUnitFree(pool)
            ticket = self.line.join(pool, holder, priority, owner, on_position, await use_now(use), share,
                                    self._verdict(pool, share) or FULL)
        return await self.line.wait(ticket, max_wait, self._recheck, self.resync_interval, self._abandoned)

    def _verdict(self, pool: str, share: PoolShares | None) -> str | None:
        """None when a spawn with ``share`` may take a free unit of ``pool`` now, else why not."""
        free = self.ledger.free_count(pool)
        if share is None:
            return None if free > 0 else FULL
        return share.verdict(self.held_by_group(pool), free)

    def held_by_group(self, pool: str) -> dict[str, int]:
        """group -> units of ``pool`` held or reserved for it ("": for no group)."""
        held: dict[str, int] = {}
        for holder, unit_id in self.ledger.holders().items():
            if self.inventory.by_id[unit_id].pool == pool:
                group = self.line.groups.get(holder, "")
                held[group] = held.get(group, 0) + 1
        return held

    def _held_back(self, ticket: Ticket) -> str | None:
        return self._verdict(ticket.pool, ticket.share)

    def _served_first(self, ticket: Ticket) -> bool:
        return ticket.share is not None and ticket.share.first_served(self.held_by_group(ticket.pool))

    def _first(self, pool: str) -> Ticket | None:
        return self.line.first(pool, self._held_back, self._served_first)

    def _take_if_first(self, pool: str, holder: str, share: PoolShares | None) -> Unit | None:
        """A unit for ``holder`` if its share lets it and no waiter that may take one goes before
        it (one of a group within its guarantee or reservation goes before the rest)."""
        if self._verdict(pool, share) is not None:
            return None
        if not (share is not None and share.first_served(self.held_by_group(pool))) and self._first(pool) is not None:
            return None
        return self.ledger.take(pool, holder)

    async def _admitted_locked(self, fresh: bool) -> list[str]:
        """Holders of a unit (held or reserved); ``fresh``: after a re-read of the engine."""
        if fresh:  # a unit may be counted whose object has just gone
            await self._sync_locked()
        return list(self.ledger.holders())

    async def _recheck(self, ticket: Ticket) -> None:
        """Nothing was released through us; a server may have vanished behind our back, so
        look at the engine again (a unit found free is handed to the head of the line)."""
        async with self.lock:
            if ticket.live:
                await self._sync_locked()
            if ticket.live and self.ledger.free_count(ticket.pool):
                self._serve(ticket.pool)

    def _abandoned(self, ticket: Ticket) -> None:
        """A unit was handed to a waiter just as it gave up: pass it on."""
        self._release_now(ticket.holder)
        self._pending.discard(ticket.holder)

    async def _drop_old_unit_locked(self, holder: str) -> None:
        """Free ``holder``'s previous unit once its object is gone (caller holds the lock).

        The labels are the truth: the engine is read again, and while an object of ``holder``
        still holds the unit (a stop that failed left it running), the unit stays held and
        :class:`StillHeld` is raised; it is never handed on under a live object.
        """
        if self.ledger.unit_of(holder) is None:
            return
        await self._sync_locked()
        unit = self.ledger.unit_of(holder)
        if unit is not None:
            raise StillHeld(holder, unit.id)

    def owner_counts(self, owner: str, exclude: str = "") -> tuple[int, int]:
        """(units held or reserved, spawns waiting in line) of ``owner``'s holders but ``exclude``."""
        return self.line.counts(owner, self.ledger.holders(), exclude)

    def _hand_off(self, unit: Unit) -> None:
        """Give a just-freed unit to the first live waiter of its pool that may take it."""
        self._serve(unit.pool)

    def _serve(self, pool: str) -> None:
        """Hand free units of ``pool`` to its live waiters that may take one, first in line first
        (a group's guarantee or burst may pass over some; with no shares, the head of the line)."""
        while (ticket := self._first(pool)) is not None:
            given = self.ledger.take(pool, ticket.holder)
            if given is None:  # pragma: no cover - invariant: the verdict saw a free unit
                return
            # pending from now: a re-read of the engine before the waiter wakes up must
            # not free the unit (its object does not exist yet)
            self._pending.add(ticket.holder)
            self.line.grant(ticket, given)

    def _release_now(self, holder: str) -> Unit | None:
        self.line.forget(holder)
        unit = self.ledger.release(holder)
        if unit is not None:
            self._hand_off(unit)
        return unit

    async def release(self, holder: str) -> Unit | None:
        """Free ``holder``'s unit (after its object was removed), handing it to the queue."""
        async with self.lock:
            return self._release_now(holder)

    async def resync(self) -> None:
        """Read the engine's labels again: units of objects that are gone are freed."""
        async with self.lock:
            await self._sync_locked()

    # ---- read-only views -----------------------------------------------------------

    def free_counts(self) -> dict[str, int]:
        return self.ledger.free_counts()

    def queue_length(self, pool: str) -> int:
        return self.line.length(pool)

    def unit_of(self, holder: str) -> Unit | None:
        return self.ledger.unit_of(holder)
