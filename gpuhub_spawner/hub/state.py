"""Per-hub state: what the spawners of one hub share while the hub process runs.

Spawner objects come and go (one per user and server, made again after a hub restart), but some
things must be one per hub: the allocator of each engine (its lock, its line, who holds what),
the swarm gate, the usage ledger's database connection, the start-up sync that runs once, the
leftover containers whose removal is retried.  They live in one :class:`HubState` per hub id
(``gpu_hub_id``), made on first use and reached from any spawner as ``self.hub_state``; nothing of
it is a module global, so two hubs in one process (tests do that) never see each other's state.

The first state object registers the hub-side metrics (:mod:`gpuhub_spawner.hub.metrics`), once
per registry; the queue gauge then reads the lines of every state object at scrape time.

Example::

    state = HubState.for_hub("course-a")
    allocator = state.allocator("unix:///var/run/docker.sock", lambda: Allocator(...))
    ledger = state.ledger("sqlite:////srv/jupyterhub/gpuhub.sqlite")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from gpuhub_spawner.hub import metrics
from gpuhub_spawner.hub.errors import REASONS
from gpuhub_spawner.storage.ledger import UsageLedger

T = TypeVar("T")


class HubState:
    """Allocators, gates, ledgers and background work of one hub, keyed by its hub id."""

    _hubs: ClassVar[dict[str, HubState]] = {}
    _hubs_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, hub_id: str):
        self.hub_id = hub_id
        #: engine key -> the single-host allocator of that engine
        self.allocators: dict[str, Any] = {}
        #: engine key -> the swarm gate of that swarm
        self.gates: dict[str, Any] = {}
        #: other objects whose lines the queue gauge reads (see :func:`metrics.queue_lengths`)
        self.queue_sources: list[Any] = []
        #: engine key -> the start-up sync task (one per engine, however many spawners)
        self.startup_syncs: dict[str, asyncio.Future] = {}
        #: (engine key, ledger url) pairs whose stale usage rows were closed at start
        self.ledgers_reconciled: set[tuple[str, str]] = set()
        #: object id -> the task still retrying its removal (a stop that failed left it running)
        self.leftovers: dict[str, asyncio.Future] = {}
        #: (ledger url, pool) -> (when begun, the read) of the pool's holds that waiters in its
        #: line share (hub/usage.py: one ledger read per pool while fresh, not one per waiter)
        self.pool_hold_reads: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}
        self._ledgers: dict[str, UsageLedger] = {}
        self._ledgers_lock = threading.Lock()  # ledgers are opened from worker threads
        self._notice_writer: ThreadPoolExecutor | None = None

    # ---- finding the state of a hub ---------------------------------------------------

    @classmethod
    def for_hub(cls, hub_id: str, registry: CollectorRegistry | None = None) -> HubState:
        """The state of ``hub_id``, made on first use; registers the metrics on ``registry``
        (the default registry, which the hub serves on ``/hub/metrics``) the first time."""
        with cls._hubs_lock:
            state = cls._hubs.get(hub_id)
            if state is None:
                state = cls._hubs[hub_id] = cls(hub_id)
        metrics.register(REGISTRY if registry is None else registry, cls.all_queue_lengths, REASONS)
        return state

    @classmethod
    def existing(cls) -> list[HubState]:
        with cls._hubs_lock:
            return list(cls._hubs.values())

    @classmethod
    def forget(cls, hub_id: str) -> None:
        """Drop the state of ``hub_id`` (tests; a hub never forgets itself while it runs)."""
        with cls._hubs_lock:
            state = cls._hubs.pop(hub_id, None)
        if state is not None:
            state.close()

    # ---- shared objects ---------------------------------------------------------------

    def allocator(self, key: str, factory: Callable[[], T]) -> T:
        """The allocator of engine ``key``, made by ``factory`` the first time."""
        return self._get_or_make(self.allocators, key, factory)

    def gate(self, key: str, factory: Callable[[], T]) -> T:
        """The swarm gate of swarm ``key``, made by ``factory`` the first time."""
        return self._get_or_make(self.gates, key, factory)

    def _get_or_make(self, table: dict[str, Any], key: str, factory: Callable[[], T]) -> T:
        found = table.get(key)
        if found is None:
            found = table[key] = factory()
        return found

    def add_queue_source(self, source: Any) -> None:
        """Count ``source``'s lines in ``gpuhub_queue_length`` (allocators and gates are already)."""
        if not any(s is source for s in self.queue_sources):
            self.queue_sources.append(source)

    def ledger(self, url: str) -> UsageLedger:
        """The usage ledger at ``url``, opened the first time (opening may create its tables:
        call it from a worker thread when the database may be slow)."""
        with self._ledgers_lock:
            ledger = self._ledgers.get(url)
            if ledger is None:
                ledger = self._ledgers[url] = UsageLedger(url)
            return ledger

    def has_ledger(self, url: str) -> bool:
        """The ledger at ``url`` is open already (using it does not touch the database schema)."""
        return url in self._ledgers

    def forget_ledger(self, url: str) -> None:
        with self._ledgers_lock:
            ledger = self._ledgers.pop(url, None)
        if ledger is not None:
            ledger.dispose()

    @property
    def notice_writer(self) -> ThreadPoolExecutor:
        """One thread that writes the notice table, so a user's notices are written in order."""
        if self._notice_writer is None:
            self._notice_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpuhub-notices-{self.hub_id}")
        return self._notice_writer

    # ---- metrics ----------------------------------------------------------------------

    def queue_lengths(self) -> dict[str, int]:
        """``{pool: spawns waiting in line}`` over this hub's allocators, gates and other sources."""
        lengths: dict[str, int] = {}
        sources = [*self.allocators.values(), *self.gates.values(), *self.queue_sources]
        for source in {id(s): s for s in sources}.values():
            for pool, length in metrics.queue_lengths(source).items():
                lengths[pool] = lengths.get(pool, 0) + length
        return lengths

    @classmethod
    def all_queue_lengths(cls) -> dict[str, int]:
        lengths: dict[str, int] = {}
        for state in cls.existing():
            for pool, length in state.queue_lengths().items():
                lengths[pool] = lengths.get(pool, 0) + length
        return lengths

    def close(self) -> None:
        for url in list(self._ledgers):
            self.forget_ledger(url)
        if self._notice_writer is not None:
            self._notice_writer.shutdown(wait=False)

