"""The hub exporter's rendered metrics, refreshed in the background: a scrape serves bytes.

Computing the hub exporter's families at 1,000 users takes tens of milliseconds (ledger read,
quota resolution, text exposition), more than a scrape should.  So the app renders the whole
exposition (``prometheus_client.generate_latest`` of its registry) in a worker thread every
``interval`` seconds, and again at once when an input changed (a read of the hub's API or of
the swarm calls :meth:`Snapshot.invalidate`); a scrape returns the last rendered bytes.

Staleness is bounded: the values in a response were computed at most ``interval`` (+ one
render) seconds before it, and say when (``gpuhub_exporter_snapshot_timestamp_seconds``).
Should the background renders stall or fail for longer than ``max_age``, a scrape renders
itself (one render at a time, shared) and fails if that fails, rather than serve old values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)


class Snapshot:
    """The last exposition of ``registry`` (text format), re-rendered in the background."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = 2.0,
        max_age: float | None = None,
        clock=time.monotonic,
        wall=time.time,
    ):
        self.registry = registry
        self.interval = interval
        self.max_age = max(3 * interval, interval + 5) if max_age is None else max_age
        self.clock = clock
        self.wall = wall
        self.body: bytes | None = None
        self.rendered_at: float | None = None  # clock() when the current body's render began
        self.taken_at: float | None = None  # wall() of the same moment (reported in the body)
        self.last_duration: float | None = None  # seconds the last good render took
        self.renders = 0
        self._rendering_at: float | None = None
        self._inflight: asyncio.Future[bytes] | None = None
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpuhub-exporter-render")

    def render(self) -> bytes:
        """Compute and render every family now (blocking; the app runs it in a worker thread)."""
        started, taken = self.clock(), self.wall()
        self._rendering_at = taken
        body = generate_latest(self.registry)  # prometheus_client's own text exposition
        self.body, self.rendered_at, self.taken_at = body, started, taken
        self.last_duration = self.clock() - started
        self.renders += 1
        return body

    async def refresh(self) -> bytes:
        """Render in the worker thread; callers arriving during a render share it."""
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().run_in_executor(self._executor, self.render)
            self._inflight.add_done_callback(self._done)
        return await asyncio.shield(self._inflight)

    def _done(self, _future: asyncio.Future[bytes]) -> None:
        self._inflight = None

    def age(self) -> float | None:
        """Seconds since the current body's render began; ``None`` before the first."""
        return None if self.rendered_at is None else self.clock() - self.rendered_at

    async def current(self) -> bytes:
        """What a scrape serves: the last body, unless there is none or it is older than ``max_age``."""
        age = self.age()
        if self.body is None or age is None or age > self.max_age:
            if self.body is not None:
                log.warning("Metrics are %.1f s old (background renders stalled?): rendering now", age)
            return await self.refresh()
        return self.body

    def invalidate(self) -> None:
        """An input changed: render again now rather than at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Render every ``interval`` seconds, or as soon as :meth:`invalidate` is called."""
        while True:
            self._wake.clear()  # an invalidation during the render below wakes the wait after it
            try:
                await self.refresh()
            except Exception:
                log.exception("Rendering the metrics failed; serving the previous ones")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class SnapshotCollector(Collector):
    """Says when the values in a response were computed and how long computing them took."""

    def __init__(self, snapshot: Snapshot, note: str = ""):
        self.snapshot = snapshot
        self.note = note

    def collect(self):
        s = self.snapshot
        at = GaugeMetricFamily(
            "gpuhub_exporter_snapshot_timestamp_seconds",
            f"When the values in this response were computed: the exporter recomputes them every "
            f"{s.interval:g} s and when an input changed, and serves the last result{self.note}",
        )
        at.add_metric([], s._rendering_at if s._rendering_at is not None else s.wall())
        yield at
        if s.last_duration is not None:
            took = GaugeMetricFamily(
                "gpuhub_exporter_snapshot_render_seconds",
                "How long the previous computation of these metrics took (ledger read and rendering)",
            )
            took.add_metric([], s.last_duration)
            yield took
