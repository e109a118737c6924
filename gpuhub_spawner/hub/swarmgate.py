"""The fair line in front of a swarm: which GPU service may be created now, and whose it is.

Swarm itself leaves a task that cannot be placed pending until the spawn times out; the gate
queues such a spawn (with its position) or refuses it at once, and counts each user's GPU
services (live, let through, in line) for ``max_gpu_units`` under its lock.  One gate per hub
and swarm, kept by :class:`~gpuhub_spawner.hub.state.HubState`.
"""

from __future__ import annotations

import asyncio
import time

from gpuhub_spawner.core.cluster import ClusterView, kind_of_pool
from gpuhub_spawner.core.home_node import kind_on_node, split_line_key
from gpuhub_spawner.hub.fairline import FairLine, NoUnitFree, OnPosition, Ticket


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

    def _let_through(self, view: ClusterView, pool: str, holder: str) -> str | None:
        kind = self._free_kind(view, pool)
        if kind is not None:
            self.inflight[holder] = (pool, kind)
        return kind

    def wake(self) -> None:
        self.line.nudge()

    async def admit(self, pool: str, holder: str, read_view, max_wait: float,
                    on_position: OnPosition | None = None, priority: int = 0, owner: str = "",
                    max_units: int | None = None) -> str:
        """Let ``holder`` create its service: returns the generic-resource kind to request.

        ``owner`` may have at most ``max_units`` GPU servers: those live, let through and in
        line count, checked under the gate's lock with the admission (:class:`OverLimit`).
        """
        async with self.lock:
            # spawns arriving together share a read made within 0.5 s: what this hub let
            # through since is in `inflight`, and a release by this hub forces a fresh read
            view = await read_view(max_age=0.5)

            async def admitted(fresh: bool) -> list[str]:
                seen = await read_view(max_age=0.0) if fresh else view
                return [*seen.placements, *self.inflight]

            await self.line.count_in(owner, holder, max_units, admitted)
            kind = None if self.line.length(pool) else self._let_through(view, pool, holder)
            if kind is not None:
                return kind
            if max_wait <= 0:
                raise NoUnitFree(pool)
            ticket = self.line.join(pool, holder, priority, owner, on_position)

        async def recheck(ticket: Ticket) -> str | None:
            async with self.lock:
                if self.line.head(pool) is not ticket:
                    return None
                return self._let_through(await read_view(max_age=0.5), pool, holder)

        # releases by this hub nudge the line at once; anything else shows in a read within 1 s
        return await self.line.wait(ticket, max_wait, recheck, interval=1.0)

    def settled(self, holder: str) -> None:
        """``holder``'s task has its unit (or its spawn ended): stop counting it in flight."""
        if self.inflight.pop(holder, None) is not None:
            self.wake()


__all__ = ["SwarmGate"]
