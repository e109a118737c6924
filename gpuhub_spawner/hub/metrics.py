"""The hub-side metrics on the hub's own ``/hub/metrics``: refusals by reason, spawns in line.

Nothing is registered at import: :func:`register` runs when the first per-hub state object is
made (:meth:`gpuhub_spawner.hub.state.HubState.for_hub`), once per registry, so importing the
spawners (the exporter, a test, ``gpuhub config check``) leaves a registry as it was.  The queue
collector computes at scrape time from the live state objects; it keeps no numbers of its own.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

#: registry -> its refusal counter (a registry that is dropped drops its entry)
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class QueueCollector(Collector):
    """``gpuhub_queue_length{pool}``: spawns waiting in line now, summed over every hub state."""

    def __init__(self, lengths: Callable[[], Mapping[str, int]]):
        self._lengths = lengths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gpuhub_queue_length", "Spawns waiting in line for a GPU unit, by pool", labels=["pool"]
        )
        for pool, length in sorted(self._lengths().items()):
            family.add_metric([pool], float(length))
        yield family


def register(registry: CollectorRegistry, lengths: Callable[[], Mapping[str, int]], reasons: Iterable[str]) -> bool:
    """Register the queue collector and the refusal counter on ``registry``, once; True the first time."""
    with _LOCK:
        if registry in _COUNTERS:
            return False
        registry.register(QueueCollector(lengths))
        counter = Counter(
            "gpuhub_spawn_refusals_total",
            "Spawns the GPU spawner refused (no unit, quota, bad profile, engine down…), by reason",
            ["reason"],
            registry=registry,
        )
        for reason in reasons:  # known label values exist from the start (rate() needs a zero)
            counter.labels(reason)
        _COUNTERS[registry] = counter
        return True


def count_refusal(reason: str) -> None:
    """One more refusal for ``reason`` on every registry the metrics are registered with."""
    with _LOCK:
        counters = list(_COUNTERS.values())
    for counter in counters:
        counter.labels(reason).inc()


def queue_lengths(source: Any) -> dict[str, int]:
    """``{pool: spawns in line}`` of one allocator or swarm gate.

    Preferred: a ``queue_lengths()`` method; else ``inventory.pools`` with ``queue_length(pool)``
    (the single-host allocator), else a ``queues`` mapping of pool -> line (the swarm gate).
    """
    if hasattr(source, "queue_lengths"):
        return dict(source.queue_lengths())
    inventory = getattr(source, "inventory", None)
    if inventory is not None and hasattr(source, "queue_length"):
        return {pool: source.queue_length(pool) for pool in inventory.pools}
    return {pool: len(line) for pool, line in list(getattr(source, "queues", {}).items())}
