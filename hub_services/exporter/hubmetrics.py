"""What the hub exporter reports (pure apart from the ledger reads).

The app computes these in the background every few seconds and a scrape serves the last
result (:mod:`.snapshot`): values are as of ``gpuhub_exporter_snapshot_timestamp_seconds``.

Per user holding a server or a GPU unit (so the number of series is bounded by what runs):
unit, profile, node, server age and idle time, GPU-seconds used this budget period and budget
left.  Per pool: capacity, held and free units (on a swarm, capacity and free units come from
the nodes and tasks, :mod:`.swarmread`, with per-node series).  Tutorial sync status.  The
``gpuhub_server_info`` series joins users to GPU UUID and MIG instance, with the labels that
the node agent (``gpuhub_gpu_*``) uses; dcgm-exporter's series (``UUID``, and ``GPU_I_ID`` for
MIG) join through the agent's ``gpu_instance_id`` with the recording rules of
``deploy/prometheus/gpuhub-dcgm.rules.yml``.

Budgets are the spawn form's, the culler's and the admin service's: the same
:func:`~gpuhub_spawner.core.quotas.resolve_policy` and :func:`~gpuhub_spawner.core.quotas.budget_view`
over the same ledger, so they always agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuhub_spawner.core.inventory import KIND_MIG, Inventory, Profile
from gpuhub_spawner.core.quotas import QuotaError, budget_view, period_bounds, resolve_policy
from gpuhub_spawner.storage.ledger import Interval, UsageLedger, usage_seconds_by_user
from hub_services.common.hubtime import parse_time
from hub_services.exporter.swarmread import SwarmState

log = logging.getLogger(__name__)


@dataclass
class HubState:
    """What the exporter last read from the hub's REST API (refreshed in the background)."""

    users: list[dict[str, Any]] = field(default_factory=list)  # users with an active server
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> properties
    read_at: float | None = None  # wall-clock time of the last good read
    ok: bool = False
    sync: dict[str, Any] | None = None  # tutorial-sync status.json, None if not configured
    sync_ok: bool = False


@dataclass
class Settings:
    inventory: Inventory
    profiles: list[Profile]
    quota_defaults: dict[str, Any]




class Policies:
    """Quota policies of users, resolved once per (groups, override) and shared between users."""

    def __init__(self, state: HubState, defaults: dict[str, Any], overrides: dict[str, dict[str, Any]]):
        self.state = state
        self.defaults = defaults
        self.overrides = overrides
        self.groups_of = {u["name"]: u.get("groups") or [] for u in state.users}
        self._cache: dict[tuple, tuple[Any, QuotaError | None]] = {}
        self._warned: set[tuple] = set()

    def of(self, user: str, warn: bool = True):
        """The user's policy; ``None`` when its quota cannot be read (logged once per pass)."""
        groups = tuple(sorted(self.groups_of.get(user, [])))
        key = (groups, user if user in self.overrides else None)
        if key not in self._cache:
            try:
                policy = resolve_policy(
                    self.defaults, [self.state.groups.get(g, {}) for g in groups], self.overrides.get(user)
                )
                self._cache[key] = (policy, None)
            except QuotaError as e:
                self._cache[key] = (None, e)
        policy, error = self._cache[key]
        if error is not None and warn and key not in self._warned:
            self._warned.add(key)
            log.warning("Quota of %s cannot be read: %s", user, error)
        return policy

    def periods(self) -> set[str]:
        """Every period a holder's policy can have: those of the hub's active users, of users
        with an override, and the defaults' (a holder the hub does not list gets those)."""
        found = set()
        for user in (*self.groups_of, *self.overrides, ""):
            policy = self.of(user, warn=False)
            if policy is not None:
                found.add(policy.period)
        return found


class HubCollector(Collector):
    """Computes every ``gpuhub_…`` family of the hub exporter (the app renders it in the
    background and serves the result; see :mod:`.snapshot`).

    ``swarm``: ``None`` on a single host (pool capacity from ``settings.inventory``); on a swarm
    the last :class:`~.swarmread.SwarmState`, whose view gives capacity, free units and nodes.
    """

    def __init__(
        self,
        state: HubState,
        ledger: UsageLedger,
        settings: Settings,
        clock=time.time,
        swarm: SwarmState | None = None,
    ):
        self.state = state
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self.swarm = swarm

    def collect(self):
        now = self.clock()
        # each input is replaced whole by the background reads: take each once
        state, settings, swarm = self.state, self.settings, self.swarm
        inventory, profiles = settings.inventory, settings.profiles
        if swarm is not None:
            inventory, profiles = swarm.inventory, swarm.profiles
        moment = datetime.fromtimestamp(now, timezone.utc)
        policies = Policies(state, settings.quota_defaults, self.ledger.all_overrides())
        since = {period: period_bounds(moment, period)[0] for period in policies.periods()}
        # one consistent read serves the open allocations and every period's usage
        rows = self.ledger.intervals_since(min(since.values(), default=moment))
        allocations = [r for r in rows if r.ended_at is None]
        usage = {period: usage_seconds_by_user(rows, start, moment) for period, start in since.items()}
        holders = {a.user for a in allocations} | {u["name"] for u in state.users}
        yield from self._hub(state)
        yield from self._pools(allocations, inventory, swarm)
        yield from self._servers(state, allocations, now, inventory, profiles)
        yield from self._budgets(holders, policies, usage, moment)
        yield from self._sync(state)

    # ---- families ----------------------------------------------------------------------

    def _hub(self, state: HubState):
        up = GaugeMetricFamily("gpuhub_exporter_hub_up", "1 if the last read of the hub's API worked, else 0")
        up.add_metric([], 1.0 if state.ok else 0.0)
        yield up
        if state.read_at is not None:
            at = GaugeMetricFamily(
                "gpuhub_exporter_hub_read_timestamp_seconds", "When the hub's API was last read successfully"
            )
            at.add_metric([], state.read_at)
            yield at

    def _pools(self, allocations: list[Interval], inventory: Inventory, swarm: SwarmState | None):
        held: dict[str, int] = {pool: 0 for pool in inventory.pools}
        for a in allocations:
            held[a.pool] = held.get(a.pool, 0) + 1
        used = GaugeMetricFamily(
            "gpuhub_pool_held_units", "GPU units of a pool held by a server (usage ledger)", labels=["pool"]
        )
        for pool in sorted(held):
            used.add_metric([pool], float(held[pool]))
        if swarm is None:
            cap = GaugeMetricFamily("gpuhub_pool_capacity_units", "GPU units in a pool", labels=["pool"])
            free = GaugeMetricFamily(
                "gpuhub_pool_free_units", "GPU units of a pool free now", labels=["pool"]
            )
            for pool in sorted(held):
                size = inventory.pool_size(pool)
                cap.add_metric([pool], float(size))
                free.add_metric([pool], float(max(0, size - held[pool])))
            yield from (cap, used, free)
            return
        yield used
        yield from self._swarm(swarm, sorted(held))

    def _swarm(self, swarm: SwarmState, pools: list[str]):
        up = GaugeMetricFamily(
            "gpuhub_exporter_swarm_up", "1 if the last read of the swarm manager's API worked, else 0"
        )
        up.add_metric([], 1.0 if swarm.ok else 0.0)
        yield up
        if swarm.read_at is None:
            return  # never read: capacity unknown, not zero
        at = GaugeMetricFamily(
            "gpuhub_exporter_swarm_read_timestamp_seconds", "When the swarm was last read successfully"
        )
        at.add_metric([], swarm.read_at)
        yield at
        view = swarm.view
        cap = GaugeMetricFamily(
            "gpuhub_pool_capacity_units",
            "GPU units in a pool (on a swarm: advertised by nodes that are ready and active)",
            labels=["pool"],
        )
        free = GaugeMetricFamily(
            "gpuhub_pool_free_units",
            "GPU units of a pool free now (on a swarm: on ready, active nodes, held by no live task)",
            labels=["pool"],
        )
        for pool in pools:
            cap.add_metric([pool], float(view.pool_size(pool)))
            free.add_metric([pool], float(view.free_count(pool)))
        yield from (cap, free)
        info = GaugeMetricFamily(
            "gpuhub_swarm_node_info",
            "A swarm node (value 1): its state (ready/down/…) and availability (active/pause/drain)",
            labels=["node", "node_id", "addr", "role", "state", "availability"],
        )
        units = GaugeMetricFamily(
            "gpuhub_swarm_node_units", "GPU units a swarm node advertises, per pool", labels=["node", "pool"]
        )
        per_node: dict[tuple[str, str], int] = {}
        for unit in view.units:
            node = view.nodes.get(view.unit_node.get(unit.id, ""))
            key = (node.hostname if node else unit.node, unit.pool)
            per_node[key] = per_node.get(key, 0) + 1
        for n in sorted(view.nodes.values(), key=lambda n: (n.hostname, n.id)):
            info.add_metric([n.hostname, n.id, n.addr, n.role, n.state, n.availability], 1.0)
        for (node, pool), count in sorted(per_node.items()):
            units.add_metric([node, pool], float(count))
        yield from (info, units)

    def _profile(self, server: Mapping[str, Any] | None, profiles: list[Profile]) -> str:
        options = (server or {}).get("user_options") or {}
        slug = options.get("profile")
        if isinstance(slug, str) and slug:
            return slug
        return next((p.slug for p in profiles if p.default), "")

    def _servers(
        self,
        state: HubState,
        allocations: list[Interval],
        now: float,
        inventory: Inventory,
        profiles: list[Profile],
    ):
        info = GaugeMetricFamily(
            "gpuhub_server_info",
            "A server or GPU unit held by a user (value 1): unit, pool, profile, node, and the GPU "
            "UUID / MIG UUID it is on (empty for CPU-only servers)",
            labels=["user", "server", "unit", "pool", "profile", "node", "gpu_uuid", "mig_uuid"],
        )
        age = GaugeMetricFamily(
            "gpuhub_server_age_seconds", "Time since the server started", labels=["user", "server"]
        )
        idle = GaugeMetricFamily(
            "gpuhub_server_idle_seconds",
            "Time since the hub last saw activity on the server (since its start when none yet)",
            labels=["user", "server"],
        )
        servers: dict[tuple[str, str], Mapping[str, Any]] = {}
        for user in state.users:
            for name, server in (user.get("servers") or {}).items():
                servers[(user["name"], name)] = server
        held: dict[tuple[str, str], Interval] = {(a.user, a.server): a for a in allocations}
        for key in sorted(set(servers) | set(held)):
            user, name = key
            server, alloc = servers.get(key), held.get(key)
            unit_id = alloc.unit_id if alloc else ""
            unit = inventory.by_id.get(unit_id)
            gpu_uuid = unit.gpu_uuid if unit else ""
            mig_uuid = unit.device_id if unit is not None and unit.kind == KIND_MIG else ""
            pool = alloc.pool if alloc else ""
            node = alloc.node if alloc else ""
            labels = [user, name, unit_id, pool, self._profile(server, profiles), node, gpu_uuid, mig_uuid]
            info.add_metric(labels, 1.0)
            started = parse_time((server or {}).get("started"))
            if started is None and alloc is not None:
                started = alloc.started_at.timestamp()
            if started is not None:
                age.add_metric([user, name], max(0.0, now - started))
                last = parse_time((server or {}).get("last_activity")) or started
                idle.add_metric([user, name], max(0.0, now - last))
        yield from (info, age, idle)

    def _budgets(self, holders: set[str], policies: Policies, usage: dict[str, dict[str, float]], now: datetime):
        used_f = GaugeMetricFamily(
            "gpuhub_user_gpu_usage_seconds",
            "GPU-seconds a user used in the current budget period (resets when a period starts)",
            labels=["user", "period"],
        )
        left_f = GaugeMetricFamily(
            "gpuhub_user_gpu_budget_left_seconds",
            "GPU-seconds a user has left in the current budget period",
            labels=["user", "period"],
        )
        for user in sorted(holders):
            policy = policies.of(user)
            if policy is None:
                continue
            view = budget_view(policy, usage[policy.period].get(user, 0.0), now)
            used_f.add_metric([user, view.period], view.used_seconds)
            if view.left_seconds is not None:
                left_f.add_metric([user, view.period], view.left_seconds)
        yield from (used_f, left_f)

    def _sync(self, state: HubState):
        if state.sync is None and not state.sync_ok:
            return
        up = GaugeMetricFamily(
            "gpuhub_tutorial_sync_status_up", "1 if the tutorial-sync status could be read"
        )
        up.add_metric([], 1.0 if state.sync_ok else 0.0)
        yield up
        s = state.sync or {}
        if not state.sync_ok:
            return
        info = GaugeMetricFamily(
            "gpuhub_tutorial_sync_status_info",
            "The tutorial commit that servers see (value 1)",
            labels=["repo", "branch", "commit"],
        )
        info.add_metric(
            [str(s.get("repo") or ""), str(s.get("branch") or ""), str(s.get("commit") or "")], 1.0
        )
        failing = GaugeMetricFamily(
            "gpuhub_tutorial_sync_status_failing", "1 if the last sync attempt failed (see the status page)"
        )
        failing.add_metric([], 1.0 if s.get("last_error") else 0.0)
        yield from (info, failing)
        if s.get("published_at"):
            published = GaugeMetricFamily(
                "gpuhub_tutorial_sync_status_published_timestamp_seconds",
                "When the current commit was published",
            )
            published.add_metric([], float(s["published_at"]))
            yield published
