"""GPU units on a Docker Swarm (pure: reads node and task dicts, touches nothing).

Swarm can only be told *how many* of a generic resource a task needs, not which one.  So:

- whole GPUs and MIG instances are **named** generic resources, one kind per pool with
  underscore names (``NVIDIA_GPU=GPU-…``, ``NVIDIA_MIG_1G_10GB=MIG-…``); swarm picks the
  entry, puts it in the task's ``AssignedGenericResources`` and in the container's
  ``DOCKER_RESOURCE_<KIND>`` variable, and the NVIDIA runtime's ``swarm-resource`` setting
  turns that variable into the device the container sees;
- time-sliced replica slots are a **discrete** kind per GPU with a count of slots
  (``NVIDIA_SHARED_<id>=4``): swarm would hand out every named entry with an equal value at
  once, so N slots cannot be one UUID listed N times.  The hub chooses the GPU (its kind) and
  sets ``NVIDIA_VISIBLE_DEVICES`` itself; the GPU's UUID is published as an engine label
  ``org.gpuhub.shared.<KIND>=<GPU uuid>``.

:class:`ClusterView` turns ``docker node ls`` / ``docker service ps`` data into units, their
holders and the free counts per pool, the same :class:`~gpuhub_spawner.core.inventory.Unit` model
the single-host spawner uses (with ``node`` set); :func:`read_swarm` fetches that data from the
manager through the client it is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.inventory import (
    KIND_GPU,
    KIND_MIG,
    KIND_REPLICA,
    POOL_GPU,
    POOL_SHARED,
    Inventory,
    Unit,
    pool_for_mig,
)
from gpuhub_spawner.core.labels import LABEL_HUB, ServerLabels
from gpuhub_spawner.core.mig_profiles import kind_suffix, profile_of_kind_suffix

KIND_PREFIX = "NVIDIA_"
GPU_KIND = "NVIDIA_GPU"
MIG_KIND_PREFIX = "NVIDIA_MIG_"
SHARED_KIND_PREFIX = "NVIDIA_SHARED_"
SHARED_LABEL_PREFIX = "org.gpuhub.shared."

#: task states (actual, not desired) in which a task holds or is about to hold its resources
LIVE_TASK_STATES = frozenset(
    {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
)


def mig_kind(profile: str) -> str:
    """``1g.10gb`` -> ``NVIDIA_MIG_1G_10GB``, ``1g.10gb+me`` -> ``NVIDIA_MIG_1G_10GB_ME``,
    ``1g.10gb-me`` -> ``NVIDIA_MIG_1G_10GB_NO_ME`` (a valid variable name that reads back)."""
    return MIG_KIND_PREFIX + kind_suffix(profile)


def shared_kind(gpu_uuid: str) -> str:
    """A per-GPU discrete kind for its replica slots, e.g. ``NVIDIA_SHARED_5E1C0A2B9F11``."""
    digits = re.sub(r"[^0-9A-Za-z]", "", gpu_uuid.removeprefix("GPU-")).upper()
    return SHARED_KIND_PREFIX + digits[:16]


def kind_of_unit(unit: Unit) -> str:
    if unit.kind == KIND_MIG:
        return mig_kind(unit.mig_profile)
    if unit.kind == KIND_REPLICA:
        return shared_kind(unit.gpu_uuid)
    return GPU_KIND


def node_resources(units: Iterable[Unit]) -> tuple[list[str], dict[str, str]]:
    """What a node advertises for ``units``: ``node-generic-resources`` entries and engine labels."""
    named: list[str] = []
    slots: dict[str, int] = {}
    labels: dict[str, str] = {}
    for unit in units:
        kind = kind_of_unit(unit)
        if unit.kind == KIND_REPLICA:
            slots[kind] = slots.get(kind, 0) + 1
            labels[SHARED_LABEL_PREFIX + kind] = unit.gpu_uuid
        else:
            named.append(f"{kind}={unit.device_id}")
    discrete = [f"{kind}={count}" for kind, count in sorted(slots.items())]
    return sorted(named) + discrete, labels


def named_kinds(resources: Iterable[str]) -> list[str]:
    """The kinds the NVIDIA runtime must read (``swarm-resource``): the named ones."""
    kinds = []
    for entry in resources:
        kind, _, value = entry.partition("=")
        if not value.isdigit() and kind not in kinds:
            kinds.append(kind)
    return kinds


def assigned_resources(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The generic resources swarm gave a task (the API calls the field ``GenericResources``;
    the engine's Go type ``AssignedGenericResources``)."""
    return list(task.get("AssignedGenericResources") or task.get("GenericResources") or [])


def _generic(entries: Iterable[Mapping[str, Any]] | None) -> list[tuple[str, str | int, bool]]:
    """(kind, value, named) from the API's GenericResources list."""
    out = []
    for entry in entries or ():
        if "NamedResourceSpec" in entry:
            spec = entry["NamedResourceSpec"]
            out.append((spec.get("Kind", ""), spec.get("Value", ""), True))
        elif "DiscreteResourceSpec" in entry:
            spec = entry["DiscreteResourceSpec"]
            out.append((spec.get("Kind", ""), int(spec.get("Value", 0)), False))
    return out


@dataclass(frozen=True)
class NodeInfo:
    id: str
    hostname: str
    addr: str
    state: str  # ready / down / unknown / disconnected
    availability: str  # active / pause / drain
    role: str

    @property
    def schedulable(self) -> bool:
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True)
class Placement:
    """A live task of a gpuhub server: where it runs and what it holds."""

    service_id: str
    service_name: str
    node_id: str
    state: str
    unit_ids: tuple[str, ...]
    assigned: bool = False  # swarm gave the task its generic resources (named or discrete)


@dataclass
class ClusterView:
    """Units of the whole swarm, who holds them, and what is free (one consistent read)."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)
    unit_node: dict[str, str] = field(default_factory=dict)  # unit id -> node id
    held: dict[str, str] = field(default_factory=dict)  # unit id -> service name
    placements: dict[str, Placement] = field(default_factory=dict)  # service name -> placement
    #: shared kinds: kind -> (gpu uuid, node id, slots, slots taken)
    shared: dict[str, tuple[str, str, int, int]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # pool -> tasks not yet given a unit
    #: named units held by tasks that are told to stop (free in a moment)
    releasing: set[str] = field(default_factory=set)

    #: this hub's services by name, with their labels (filled by :func:`read_swarm`)
    labels: dict[str, ServerLabels] = field(default_factory=dict)

    @classmethod
    def read(cls, nodes: list[Mapping[str, Any]], tasks: list[Mapping[str, Any]],
             service_names: Mapping[str, str] | None = None) -> ClusterView:
        """Build the view from ``docker node ls`` and ``docker service ps`` (API dicts).

        ``service_names`` maps service id -> name (tasks only carry the id).
        """
        view = cls()
        for node in nodes:
            view._add_node(node)
        taken_slots: dict[str, int] = {}
        for task in tasks:
            view._add_task(task, service_names or {}, taken_slots)
        view._add_shared_slots(taken_slots)
        return view

    def _add_node(self, n: Mapping[str, Any]) -> None:
        """A node and the units it advertises (named kinds; a shared kind's slots come later)."""
        desc = n.get("Description") or {}
        status = n.get("Status") or {}
        spec = n.get("Spec") or {}
        info = NodeInfo(
            id=n.get("ID", ""),
            hostname=desc.get("Hostname", ""),
            addr=status.get("Addr", ""),
            state=status.get("State", "unknown"),
            availability=spec.get("Availability", "active"),
            role=spec.get("Role", "worker"),
        )
        self.nodes[info.id] = info
        labels = (desc.get("Engine") or {}).get("Labels") or {}
        for kind, value, named in _generic((desc.get("Resources") or {}).get("GenericResources")):
            unit = _unit_for(kind, value, named, info.hostname)
            if unit is not None:
                self.units.append(unit)
                self.unit_node[unit.id] = info.id
            elif not named and kind.startswith(SHARED_KIND_PREFIX):
                self.shared[kind] = (labels.get(SHARED_LABEL_PREFIX + kind, ""), info.id, int(value), 0)

    def _add_task(self, t: Mapping[str, Any], names: Mapping[str, str], taken_slots: dict[str, int]) -> None:
        """A live task: what it holds (named units, shared slots) or waits for, and where."""
        # swarm frees a task's resources when the task itself ends, not when it is told to:
        # a task being shut down (desired "shutdown"/"remove", still running) still holds them
        state = (t.get("Status") or {}).get("State", "")
        if state not in LIVE_TASK_STATES:
            return
        service = names.get(t.get("ServiceID", ""), t.get("ServiceID", ""))
        held: list[str] = []
        assigned = assigned_resources(t)
        for kind, value, named in _generic(assigned):
            if named:
                held.append(str(value))
                self.held[str(value)] = service
            elif kind in self.shared:
                taken_slots[kind] = taken_slots.get(kind, 0) + 1
        if t.get("DesiredState", "running") != "running":
            self.releasing.update(held)
        reservations = ((t.get("Spec") or {}).get("Resources") or {}).get("Reservations", {})
        requested = _generic(reservations.get("GenericResources"))
        pool = pool_of_kind(requested[0][0]) if requested and not assigned else None
        if pool:
            self.pending[pool] = self.pending.get(pool, 0) + 1
        self.placements[service] = Placement(
            service_id=t.get("ServiceID", ""),
            service_name=service,
            node_id=t.get("NodeID", ""),
            state=state,
            unit_ids=tuple(held),
            assigned=bool(assigned),
        )

    def _add_shared_slots(self, taken_slots: Mapping[str, int]) -> None:
        """Name each shared GPU's slots as units (swarm only counts them)."""
        for kind, taken in taken_slots.items():
            gpu, node, slots, _ = self.shared[kind]
            self.shared[kind] = (gpu, node, slots, taken)
        for gpu, node_id, slots, _ in self.shared.values():
            host = self.nodes[node_id].hostname if node_id in self.nodes else ""
            for k in range(slots):
                unit = Unit(
                    id=f"{gpu}/slot-{k}", kind=KIND_REPLICA, pool=POOL_SHARED, device_id=gpu,
                    gpu_uuid=gpu, node=host, slot=k, slots=slots,
                )
                self.units.append(unit)
                self.unit_node[unit.id] = node_id

    # ---- queries -----------------------------------------------------------------------

    def inventory(self) -> Inventory:
        return Inventory(tuple(self.units))

    def pool_size(self, pool: str) -> int:
        """Units of ``pool`` on nodes that take new servers (ready and active)."""
        return sum(1 for u in self.units if u.pool == pool and self._open(u))

    def _open(self, unit: Unit) -> bool:
        node = self.nodes.get(self.unit_node.get(unit.id, ""))
        return node is not None and node.schedulable

    def free_count(self, pool: str) -> int:
        if pool == POOL_SHARED:
            return sum(self.shared_free(kind) for kind in self.shared)
        return sum(1 for u in self.units if u.pool == pool and self._open(u) and u.id not in self.held)

    def free_counts(self) -> dict[str, int]:
        return {pool: self.free_count(pool) for pool in {u.pool for u in self.units}}

    def shared_free(self, kind: str) -> int:
        gpu, node_id, slots, taken = self.shared[kind]
        node = self.nodes.get(node_id)
        return max(0, slots - taken) if node is not None and node.schedulable else 0

    def best_shared_kind(self, exclude: Mapping[str, int] | None = None) -> str | None:
        """The GPU with the most free slots (spreads servers over GPUs); ``exclude`` = in flight."""
        exclude = exclude or {}
        best, most = None, 0
        for kind in sorted(self.shared):
            free = self.shared_free(kind) - exclude.get(kind, 0)
            if free > most:
                best, most = kind, free
        return best

    def node_of_unit(self, unit_id: str) -> NodeInfo | None:
        return self.nodes.get(self.unit_node.get(unit_id, ""))

    def unit(self, unit_id: str) -> Unit | None:
        by_id = self.__dict__.get("_by_id")
        if by_id is None or len(by_id) != len(self.units):
            by_id = self.__dict__["_by_id"] = {u.id: u for u in self.units}
        return by_id.get(unit_id)


def _unit_for(kind: str, value: Any, named: bool, hostname: str) -> Unit | None:
    if not named:
        return None
    value = str(value)
    if kind == GPU_KIND:
        return Unit(id=value, kind=KIND_GPU, pool=POOL_GPU, device_id=value, gpu_uuid=value, node=hostname)
    if kind.startswith(MIG_KIND_PREFIX):
        profile = _profile_of_mig_kind(kind)
        return Unit(
            id=value, kind=KIND_MIG, pool=pool_for_mig(profile), device_id=value, gpu_uuid="",
            node=hostname, mig_profile=profile,
        )
    return None


def _profile_of_mig_kind(kind: str) -> str:
    """``NVIDIA_MIG_1G_10GB`` -> ``1g.10gb`` (``1C_2G_20GB`` -> ``1c.2g.20gb``, ``1G_10GB_ME`` ->
    ``1g.10gb+me``, ``1G_10GB_NO_ME`` -> ``1g.10gb-me``)."""
    return profile_of_kind_suffix(kind[len(MIG_KIND_PREFIX):])


def pool_of_kind(kind: str) -> str | None:
    if kind == GPU_KIND:
        return POOL_GPU
    if kind.startswith(MIG_KIND_PREFIX):
        return pool_for_mig(_profile_of_mig_kind(kind))
    if kind.startswith(SHARED_KIND_PREFIX):
        return POOL_SHARED
    return None


def kind_of_pool(pool: str) -> str | None:
    """The named kind a pool's services request (None for shared: the hub picks a GPU kind)."""
    if pool == POOL_GPU:
        return GPU_KIND
    if pool.startswith("mig-"):
        return mig_kind(pool[len("mig-"):])
    return None


def read_swarm(api: Any, hub_id: str) -> ClusterView:
    """Read the swarm through the manager's low-level API: the one read of it, for the swarm
    spawner and the hub exporter alike (the only function here that calls out).

    ``api`` is a ``docker.APIClient`` (its ``nodes``, ``tasks`` and ``services`` are called,
    blocking: run this in a thread).  All tasks, not only those meant to run: one being shut
    down holds its unit until it ends.  Only hub ``hub_id``'s services are named, with their
    labels in :attr:`ClusterView.labels`.
    """
    nodes = api.nodes()
    tasks = api.tasks()
    services = api.services(filters={"label": f"{LABEL_HUB}={hub_id}"})
    names = {s["ID"]: (s.get("Spec") or {}).get("Name", s["ID"]) for s in services}
    view = ClusterView.read(nodes, tasks, names)
    view.labels = {names[s["ID"]]: ServerLabels.from_labels((s.get("Spec") or {}).get("Labels")) for s in services}
    return view
