"""Pool capacity on a Docker Swarm, for the hub exporter (``GPUHUB_SPAWNER=swarm``).

On a swarm the hub's host knows no GPUs: they are what the nodes advertise as generic
resources.  The exporter reads the manager's API the way the swarm spawner does (nodes, live
tasks, this hub's services) into a :class:`~gpuhub_spawner.core.cluster.ClusterView`, in the
background; the collector then reports per pool the units on schedulable nodes and the free
ones, and per node its state and units.

The one read that does I/O is :func:`read_swarm`, the swarm spawner's own, re-exported from
:mod:`gpuhub_spawner.core.cluster` (blocking ``docker.APIClient`` calls: run it in a thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.cluster import ClusterView, read_swarm
from gpuhub_spawner.core.inventory import Inventory, Profile, profiles_from_config

__all__ = ["SwarmState", "read_swarm", "swarm_down", "swarm_state"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwarmState:
    """The last read of the swarm: the view, its units as an inventory, and the profiles."""

    view: ClusterView = field(default_factory=ClusterView)
    inventory: Inventory = field(default_factory=Inventory)
    profiles: list[Profile] = field(default_factory=list)
    read_at: float | None = None  # wall-clock time of the last good read; None: never read
    ok: bool = False


def swarm_state(view: ClusterView, profile_config: list[Any], read_at: float | None = None) -> SwarmState:
    """A good read: the view with its inventory and the profiles over it (pools come and go
    with nodes, so a configured profile may name a pool no node offers yet)."""
    inventory = view.inventory()
    profiles = profiles_from_config(list(profile_config), inventory, require_pools=False)
    return SwarmState(view, inventory, profiles, time.time() if read_at is None else read_at, True)


def swarm_down(previous: SwarmState) -> SwarmState:
    """A failed read: the last good view, marked down."""
    return SwarmState(previous.view, previous.inventory, previous.profiles, previous.read_at, False)
