"""The fair line in front of a swarm: which GPU service may be created now, and whose it is.

Swarm itself leaves a task that cannot be placed pending until the spawn times out; the gate
queues such a spawn (with its position) or refuses it at once, and counts each user's GPU
services (live, let through, in line) for ``max_gpu_units`` under its lock.  One gate per hub
and swarm, kept by :class:`~gpuhub_spawner.hub.state.HubState`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gpuhub_spawner.core.cluster import ClusterView, kind_of_pool
from gpuhub_spawner.core.home_node import kind_on_node, split_line_key
from gpuhub_spawner.core.shares import FULL, PoolShares
from gpuhub_spawner.hub.fairline import FairLine, NoUnitFree, OnPosition, Ticket, Use, use_now


class SwarmGate:
    """The line in front of swarm for one hub: who may create a GPU service now.

    ``inflight`` holds spawns that were let through but whose task has no unit yet, so the
    free counts read from the engine are not handed out twice in that window.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.line = FairLine()
        self.inflight: dict[str, tuple[str, str]] = {}  # holder -> (pool, kind)
        self.view: ClusterView | None = None
        self.view_time = 0.0
        #: the read of the swarm in flight (when it began), and the one queued behind it
        self._reading: tuple[float, asyncio.Task[ClusterView]] | None = None
        self._next: asyncio.Task[ClusterView] | None = None
        #: service name -> unit recorded in its labels (or just assigned by this hub)
        self.service_units: dict[str, str] = {}

    def queue_length(self, pool: str) -> int:
        return self.line.length(pool)

    def queue_lengths(self) -> dict[str, int]:
        return self.line.lengths()

    def owner_counts(self, owner: str, exclude: str = "") -> tuple[int, int]:
        """(services live or let through, spawns in line) of ``owner`` as last read, less ``exclude``."""
        view = self.view or ClusterView()
        return self.line.counts(owner, [*view.placements, *self.inflight], exclude)

    def learn(self, view: ClusterView) -> None:
        """Keep ``view`` as the latest read, with the units and users its services' labels name."""
        for name, labels in view.labels.items():
            if labels.unit:
                self.service_units[name] = labels.unit
            if labels.pool and labels.user:  # a GPU server
                self.line.owners[name] = labels.user
        self.view, self.view_time = view, time.monotonic()
        # a spawn let through counts as in flight until a read shows its task holding its unit:
        # a read begun before swarm assigned it (and shared, see shared_view) does not count it
        for holder in [h for h in self.inflight if h in view.placements and view.placements[h].assigned]:
            del self.inflight[holder]

    async def shared_view(self, read: Callable[[], Awaitable[ClusterView]], max_age: float) -> ClusterView:
        """The swarm as read at most ``max_age`` seconds before this call, with callers sharing reads.

        A burst of Starts asks for the swarm dozens of times at once; each read lists every
        service, task and node on the manager. A caller takes the last read if it is young
        enough, or joins the read in flight if that began within ``max_age``; else it waits for
        the one read queued to begin after the current one, which every later caller joins too.
        So a caller never gets a read that began before its ``max_age`` (0: after the call), and
        at most two reads are ever under way.
        """
        now = time.monotonic()
        if self.view is not None and now - self.view_time <= max_age:
            return self.view
        loop = asyncio.get_running_loop()
        reading = self._reading if self._reading and self._reading[1].get_loop() is loop else None
        if reading and not reading[1].done() and reading[0] >= now - max_age:
            return await asyncio.shield(reading[1])
        if self._next is None or self._next.get_loop() is not loop or self._next.done():
            self._next = loop.create_task(self._read_after(reading[1] if reading else None, read))
        return await asyncio.shield(self._next)

    async def _read_after(self, before: asyncio.Task[ClusterView] | None, read) -> ClusterView:
        if before is not None and not before.done():
            await asyncio.wait([before])  # its outcome is its callers'
        self._next = None
        started = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        self._reading = (started, task)
        view = await read()
        self.learn(view)
        self.view_time = started  # as old as the moment the read began
        return view

    def _free_kind(self, view: ClusterView, pool: str) -> str | None:
        # in flight: let through, and not yet counted by swarm (a task that has its unit is);
        # ``pool`` may be one node's line (``<pool>@<hostname>``: core/home_node.py)
        flying = [
            kind for holder, (p, kind) in self.inflight.items()
            if (p == pool or split_line_key(p)[0] == pool)
            and not (holder in view.placements and view.placements[holder].assigned)
        ]
        pool, node = split_line_key(pool)
        if node:
            return kind_on_node(view, pool, node, len(flying))
        kind = kind_of_pool(pool)
        if kind is not None:
            return kind if view.free_count(pool) - len(flying) > 0 else None
        counts: dict[str, int] = {}
        for k in flying:
            counts[k] = counts.get(k, 0) + 1
        return view.best_shared_kind(exclude=counts)

    def _flying(self, view: ClusterView, pool: str) -> list[str]:
        """Holders let through for ``pool`` (any of its nodes' lines) whose task has no unit yet."""
        return [holder for holder, (p, _) in self.inflight.items()
                if split_line_key(p)[0] == pool and not (holder in view.placements and view.placements[holder].assigned)]

    def held_by_group(self, view: ClusterView, pool: str) -> dict[str, int]:
        """group -> this hub's GPU servers of ``pool`` counted for it: those in ``view`` by their
        labels, and those let through that it does not show yet by the group they were given."""
        held: dict[str, int] = {}
        groups = [labels.group for name, labels in view.labels.items() if labels.pool == pool and name in view.placements]
        groups += [self.line.groups.get(holder, "") for holder, (p, _) in self.inflight.items()
                   if split_line_key(p)[0] == pool and holder not in view.placements]
        for group in groups:
            held[group] = held.get(group, 0) + 1
        return held

    def pool_counts(self, pool: str) -> tuple[int, dict[str, int]]:
        """``pool``'s free units in the last view (less those let through and not placed yet) and
        the units each group holds (for a wait estimate)."""
        view = self.view or ClusterView()
        return max(0, view.free_count(pool) - len(self._flying(view, pool))), self.held_by_group(view, pool)

    def _held_back(self, view: ClusterView, pool: str, share: PoolShares | None) -> str | None:
        """None when a spawn for ``pool`` (a pool, or one node's line) with ``share`` may be let
        through now; else why not (core/shares.py)."""
        kind = self._free_kind(view, pool)
        if share is None:
            return None if kind is not None else FULL
        base = split_line_key(pool)[0]
        free = view.free_count(base) - len(self._flying(view, base)) if kind is not None else 0
        return share.verdict(self.held_by_group(view, base), free)

    def _served_first(self, view: ClusterView, pool: str, share: PoolShares | None) -> bool:
        return share is not None and share.first_served(self.held_by_group(view, split_line_key(pool)[0]))

    def _first(self, view: ClusterView, pool: str) -> Ticket | None:
        """The first waiter of ``pool``'s line that may be let through now (core/shares.py)."""
        return self.line.first(pool, lambda t: self._held_back(view, pool, t.share),
                               lambda t: self._served_first(view, pool, t.share))

    def _let_through(self, view: ClusterView, pool: str, holder: str, share: PoolShares | None = None) -> str | None:
        if self._held_back(view, pool, share) is not None:
            return None
        kind = self._free_kind(view, pool)
        if kind is not None:
            self.inflight[holder] = (pool, kind)
        return kind

    def wake(self) -> None:
        self.line.nudge()

    async def admit(self, pool: str, holder: str, read_view, max_wait: float,
                    on_position: OnPosition | None = None, priority: int = 0, owner: str = "",
                    max_units: int | None = None, use: Use = 0.0, share: PoolShares | None = None) -> str:
        """Let ``holder`` create its service: returns the generic-resource kind to request.

        ``owner`` may have at most ``max_units`` GPU servers: those live, let through and in
        line count, checked under the gate's lock with the admission (:class:`OverLimit`).
        ``share`` (groups' guaranteed shares and bursts, core/shares.py) may hold it back from a
        free unit: it then waits until it may take one, and those behind it that may go first.
        """
        async with self.lock:
            # spawns arriving together share a read made within 0.5 s: what this hub let
            # through since is in `inflight`, and a release by this hub forces a fresh read
            view = await read_view(max_age=0.5)

            async def admitted(fresh: bool) -> list[str]:
                seen = await read_view(max_age=0.0) if fresh else view
                return [*seen.placements, *self.inflight]

            await self.line.count_in(owner, holder, max_units, admitted)
            self.line.groups[holder] = share.group if share is not None else ""
            ahead = None if self._served_first(view, pool, share) else self._first(view, pool)
            kind = None if ahead is not None else self._let_through(view, pool, holder, share)
            if kind is not None:
                return kind
            if max_wait <= 0:
                raise NoUnitFree(pool)
            ticket = self.line.join(pool, holder, priority, owner, on_position, await use_now(use), share,
                                    self._held_back(view, pool, share) or FULL)

        async def recheck(ticket: Ticket) -> str | None:
            async with self.lock:
                seen = await read_view(max_age=0.5)
                if self._first(seen, pool) is not ticket:
                    return None
                return self._let_through(seen, pool, holder, ticket.share)

        # releases by this hub nudge the line at once; anything else shows in a read within 1 s
        return await self.line.wait(ticket, max_wait, recheck, interval=1.0)

    def settled(self, holder: str) -> None:
        """``holder``'s spawn ended (failed, cancelled or stopped): stop counting it in flight.

        Not when its task got its unit: then :meth:`learn` stops counting it once a read of the
        swarm shows that unit held, so no read begun earlier hands the unit out again."""
        if self.inflight.pop(holder, None) is not None:
            self.wake()


__all__ = ["SwarmGate"]
