"""The gpuhub hub exporter: a hub-managed service serving per-user Prometheus metrics.

Runs as ``python -m hub_services.exporter`` (console script ``gpuhub-hub-exporter``) under
its service prefix:

- ``GET <prefix>metrics``  the metrics of :mod:`.hubmetrics` (needs a token with the
  ``read:metrics`` scope, the one the hub's own ``/hub/metrics`` asks for, as
  ``Authorization: Bearer <token>``; ``--metrics-scope=''`` serves them to anyone)

It reads the hub's REST API in the background every ``--refresh-interval`` seconds (users with
an active server, and groups for their quotas).  The metrics themselves (usage ledger read,
quotas, text exposition) are computed in a worker thread every ``--snapshot-interval`` seconds
(2) and right after each read of the hub or the swarm; a scrape serves the last result, whose
``gpuhub_exporter_snapshot_timestamp_seconds`` says when it was computed (see :mod:`.snapshot`).

On a swarm (``GPUHUB_SPAWNER=swarm``) pool capacity and free units come from the manager's API
(``GPUHUB_DOCKER_HOST``, as the hub's), read every ``--swarm-refresh-interval`` seconds (5):
nodes, running tasks and this hub's services (``GPUHUB_HUB_ID``), as the swarm spawner reads
them; on one host they come from the GPU inventory, as the spawner's.

Least-privilege role (``jupyterhub_config.py``): ``list:users``, ``read:users:groups``,
``read:servers``, ``list:groups``, ``read:groups`` — read-only; it cannot create, change,
start or stop anything.  On a swarm it also lists nodes, tasks and services on the manager
(read-only calls, but the Docker API itself has no read-only credential).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import docker
from docker.utils import kwargs_from_env
from prometheus_client import CollectorRegistry
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Float, Int, List, Unicode, default

from gpuhub_spawner.core.inventory import Inventory, profiles_from_config
from gpuhub_spawner.hub.mixin import resolve_inventory
from gpuhub_spawner.storage.ledger import UsageLedger
from hub_services.common.base import MetricsHandler, UsageService
from hub_services.common.hubapi import HubAPIError, HubClient
from hub_services.exporter.hubmetrics import HubCollector, HubState, Settings
from hub_services.exporter.snapshot import Snapshot, SnapshotCollector
from hub_services.exporter.swarmread import SwarmState, read_swarm, swarm_down, swarm_state

log = logging.getLogger(__name__)


async def read_hub(hub: HubClient, previous: HubState) -> HubState:
    """Users with an active server and group properties; on failure the last good read, marked down."""
    try:
        users = await hub.users(state="active")
        groups = await hub.groups()
    except HubAPIError as e:
        log.warning("Cannot read the hub's API: %s", e.message)
        return HubState(
            previous.users, previous.groups, previous.read_at, False, previous.sync, previous.sync_ok
        )
    props = {g["name"]: g.get("properties") or {} for g in groups}
    return HubState(users, props, time.time(), True, previous.sync, previous.sync_ok)


async def read_sync(url: str, state: HubState, timeout: float = 5.0, token: str = "") -> None:
    """Fill ``state.sync`` from the tutorial-sync service's status.json.

    The status page is not public: ``token`` (this service's own) is sent, and the hub's
    config grants it ``access:services!service=tutorial-sync``.
    """
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        resp = await AsyncHTTPClient().fetch(
            HTTPRequest(url, headers=headers, connect_timeout=timeout, request_timeout=timeout)
        )
        state.sync, state.sync_ok = json.loads(resp.body), True
    except Exception as e:  # noqa: BLE001 - any failure means "status unknown"
        log.warning("Cannot read the tutorial-sync status at %s: %s", url, e)
        state.sync, state.sync_ok = state.sync or {}, False


async def refresh_swarm(previous: SwarmState, api: Any, hub_id: str, profile_config: list[Any]) -> SwarmState:
    """A new read of the swarm; on failure the last good one, marked down."""
    try:
        view = await asyncio.to_thread(read_swarm, api, hub_id)
        return swarm_state(view, profile_config)
    except Exception as e:  # noqa: BLE001 - manager unreachable, API error, odd node data
        log.warning("Cannot read the swarm's nodes and tasks: %s", e)
        return swarm_down(previous)


class SnapshotMetrics(MetricsHandler):
    """The last snapshot (:mod:`.snapshot`), computed in the background, not at scrape time."""

    async def metrics(self) -> bytes:
        snapshot: Snapshot = self.settings["snapshot"]
        try:
            return await snapshot.current()
        except Exception as e:  # noqa: BLE001 - the scraper sees a failed scrape, the log says why
            log.exception("Cannot compute the metrics")
            raise web.HTTPError(503, "The metrics cannot be computed now; see the exporter's log.") from e


class IndexHandler(web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("gpuhub hub exporter: metrics at ./metrics\n")


class HubExporterApp(UsageService):
    """gpuhub hub exporter: per-user, per-pool and sync metrics for Prometheus."""

    name = "gpuhub-hub-exporter"
    description = __doc__
    default_port = 8768
    title = "gpuhub hub exporter"

    gpu_inventory = List(config=True, help="As the spawner's gpu_inventory (env GPUHUB_GPU_INVENTORY).")
    gpu_discovery = Unicode(
        "auto", config=True, help="As the spawner's gpu_discovery (env GPUHUB_GPU_DISCOVERY)."
    )
    gpu_replicas_per_gpu = Int(1, config=True, help="As the spawner's (env GPUHUB_REPLICAS_PER_GPU).")
    gpu_profiles = List(config=True, help="As the spawner's gpu_profiles (env GPUHUB_PROFILES).")
    tutorial_sync_url = Unicode(
        config=True,
        help="The tutorial-sync service's status.json URL; empty: no sync metrics (env GPUHUB_TUTORIAL_SYNC_STATUS_URL).",
    )
    refresh_interval = Float(10.0, config=True, help="Seconds between reads of the hub's API.")
    snapshot_interval = Float(
        2.0,
        config=True,
        help="""Seconds between computations of the metrics in the background.

        A scrape serves the last computation, so values are at most this old (plus one
        computation, tens of milliseconds at 1,000 users); each read of the hub's API or of
        the swarm also triggers one at once.  --snapshot-interval=1
        """,
    )
    spawner = Unicode(
        "docker",
        config=True,
        help="""'swarm': pool capacity and free units come from the swarm manager's API
        (nodes and tasks), not from the GPU inventory (env GPUHUB_SPAWNER).""",
    )
    docker_host = Unicode(
        config=True,
        help="The swarm manager's engine URL, as the hub's (env GPUHUB_DOCKER_HOST; empty: DOCKER_HOST or the local socket).",
    )
    hub_id = Unicode(
        "gpuhub", config=True, help="The spawner's gpu_hub_id: labels this hub's services (env GPUHUB_HUB_ID)."
    )
    swarm_refresh_interval = Float(
        5.0, config=True, help="Seconds between reads of the swarm (nodes, tasks)."
    )

    aliases = {
        "refresh-interval": "HubExporterApp.refresh_interval",
        "snapshot-interval": "HubExporterApp.snapshot_interval",
        "swarm-refresh-interval": "HubExporterApp.swarm_refresh_interval",
        "metrics-scope": "HubExporterApp.metrics_scope",
        "tutorial-sync-url": "HubExporterApp.tutorial_sync_url",
        "usage-db-url": "HubExporterApp.usage_db_url",
    }

    @default("hub_timeout")
    def _default_hub_timeout(self) -> float:
        return 10.0  # a read every refresh_interval: a slow one is skipped, the next one tries again

    @property
    def on_swarm(self) -> bool:
        return self.spawner.strip().lower() == "swarm"

    def make_collector(self) -> HubCollector:
        if not self.usage_db_url:
            raise SystemExit("gpuhub-hub-exporter: set GPUHUB_USAGE_DB_URL (the spawner's usage_db_url)")
        if self.on_swarm:
            # GPUs are what the nodes advertise (read in the background), none on this host
            inventory = Inventory()
            profiles = profiles_from_config(list(self.gpu_profiles), inventory, require_pools=False)
        else:
            # the same inventory the spawner resolves: NVML on this host, else the static list
            inventory = resolve_inventory(
                list(self.gpu_inventory), self.gpu_discovery, self.gpu_replicas_per_gpu
            )
            profiles = profiles_from_config(list(self.gpu_profiles), inventory)
        return HubCollector(
            HubState(sync={} if self.tutorial_sync_url else None),
            UsageLedger(self.usage_db_url),
            Settings(inventory, profiles, dict(self.quota_defaults)),
            swarm=SwarmState() if self.on_swarm else None,
        )

    def make_web_app(self, collector: HubCollector) -> web.Application:
        """The tornado app; its ``settings["snapshot"]`` must be run (:meth:`Snapshot.run`)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        snapshot = Snapshot(registry, self.snapshot_interval)
        note = f"; the hub's API is read every {self.refresh_interval:g} s"
        if self.on_swarm:
            note += f", the swarm every {self.swarm_refresh_interval:g} s"
        registry.register(SnapshotCollector(snapshot, note))
        p = self.url_prefix
        return web.Application(
            [(p, IndexHandler), (p + "metrics", SnapshotMetrics)],
            snapshot=snapshot,
            metrics_scope=self.metrics_scope,
            hub_auth=self.hub_auth(),
        )

    async def refresh_loop(self, collector: HubCollector, hub: HubClient, snapshot: Snapshot) -> None:
        while True:
            state = await read_hub(hub, collector.state)
            if self.tutorial_sync_url:
                await read_sync(self.tutorial_sync_url, state, token=self.api_token)
            collector.state = state
            snapshot.invalidate()
            await asyncio.sleep(self.refresh_interval)

    def make_docker_api(self) -> docker.APIClient:
        """A low-level client for the swarm manager, configured as the hub's spawner is."""
        kwargs: dict[str, Any] = {"version": "auto", "timeout": 10, **kwargs_from_env()}
        if self.docker_host:
            kwargs["base_url"] = self.docker_host
        return docker.APIClient(**kwargs)

    async def swarm_loop(self, collector: HubCollector, snapshot: Snapshot) -> None:
        api = None
        while True:
            previous = collector.swarm or SwarmState()
            if api is None:
                try:  # "auto" asks the engine for its version: the manager may not be up yet
                    api = await asyncio.to_thread(self.make_docker_api)
                except Exception as e:  # noqa: BLE001
                    log.warning(
                        "Cannot reach the swarm manager at %s: %s", self.docker_host or "DOCKER_HOST", e
                    )
            if api is None:
                collector.swarm = swarm_down(previous)
            else:
                collector.swarm = await refresh_swarm(previous, api, self.hub_id, list(self.gpu_profiles))
            snapshot.invalidate()
            await asyncio.sleep(self.swarm_refresh_interval)

    async def serve(self) -> None:
        collector = self.make_collector()
        webapp = self.make_web_app(collector)
        snapshot: Snapshot = webapp.settings["snapshot"]
        self.listen(webapp)
        log.info("gpuhub hub exporter on %s%s", self.service_url, self.prefix)
        tasks = [asyncio.create_task(snapshot.run())]
        if self.on_swarm:
            tasks.append(asyncio.create_task(self.swarm_loop(collector, snapshot)))
        await self.refresh_loop(collector, self.hub_client(), snapshot)


main = HubExporterApp.main
