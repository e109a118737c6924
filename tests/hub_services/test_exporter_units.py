"""The hub exporter's collector over a real usage ledger (sqlite) and a given hub state, its
read of the tutorial-sync status from a real HTTP server, the ledger's column-only reads it
uses (sqlite and PostgreSQL), its text exposition, and the background snapshot that scrapes
serve, over real HTTP.  The exporter as a hub-managed
service, scraped by a real Prometheus, is in test_exporter_prometheus.py."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pg import create_database, postgres_fixture
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from traitlets.config.loader import PyFileConfigLoader

from gpuhub_spawner.core.cluster import shared_kind
from gpuhub_spawner.core.inventory import Inventory, profiles_from_config, units_from_gpus
from gpuhub_spawner.core.quotas import period_bounds
from gpuhub_spawner.storage.ledger import UsageLedger, usage_seconds_by_user
from hub_services.common.hubtime import parse_time
from hub_services.exporter.app import HubExporterApp, read_sync, refresh_swarm
from hub_services.exporter.hubmetrics import HubCollector, HubState, Settings
from hub_services.exporter.snapshot import Snapshot
from hub_services.exporter.swarmread import SwarmState

REPO = Path(__file__).resolve().parents[2]

GPU = "GPU-aaaaaaaa-0000-4000-8000-000000000001"
MIGG = "GPU-bbbbbbbb-0000-4000-8000-000000000002"
MIG = "MIG-bbbbbbbb-0000-4000-8000-000000000003"
NOW = datetime(2025, 3, 12, 12, 0, tzinfo=timezone.utc)  # a Wednesday


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@pytest.fixture
def collector(tmp_path):
    inventory = Inventory(
        tuple(units_from_gpus([{"uuid": GPU}, {"uuid": MIGG, "mig": [{"uuid": MIG, "profile": "1g.10gb"}]}]))
    )
    ledger = UsageLedger(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    # ann: the MIG unit for 2 h (her group has a 3 h budget); bob: the GPU since 1 h, plus 1 h last week
    ledger.start("ann", "", MIG, "mig-1g.10gb", "c-ann", now=NOW - timedelta(hours=2))
    ledger.start("bob", "", GPU, "gpu", "c-bob", now=NOW - timedelta(hours=1))
    ledger.start("bob", "old", GPU, "gpu", "c-bob-old", now=NOW - timedelta(days=8))
    ledger.end("c-bob-old", now=NOW - timedelta(days=8) + timedelta(hours=1))
    # zed used a GPU earlier and holds nothing now: no per-user series
    ledger.start("zed", "", GPU, "gpu", "c-zed", now=NOW - timedelta(hours=5))
    ledger.end("c-zed", now=NOW - timedelta(hours=4))
    ledger.set_override("bob", {"gpu_hours_per_period": 20}, by="admin")
    state = HubState(
        users=[
            {
                "name": "ann",
                "groups": ["course"],
                "servers": {
                    "": {
                        "started": iso(NOW - timedelta(hours=2)),
                        "last_activity": iso(NOW - timedelta(minutes=30)),
                        "user_options": {"profile": "mig-1g-10gb"},
                    }
                },
            },
            {
                "name": "bob",
                "groups": [],
                "servers": {
                    "": {"started": iso(NOW - timedelta(hours=1)), "last_activity": None, "user_options": {}}
                },
            },
            {
                "name": "cy",
                "groups": [],
                "servers": {
                    "": {
                        "started": iso(NOW - timedelta(minutes=10)),
                        "last_activity": iso(NOW - timedelta(minutes=1)),
                        "user_options": {"profile": "cpu"},
                    }
                },
            },
        ],
        groups={"course": {"gpu_hours_per_period": 3}},
        read_at=NOW.timestamp(),
        ok=True,
    )
    settings = Settings(
        inventory, profiles_from_config([], inventory), {"gpu_hours_per_period": 10, "period": "week"}
    )
    yield HubCollector(state, ledger, settings, clock=NOW.timestamp)
    ledger.dispose()


def scrape(collector) -> dict[str, list[tuple[dict, float]]]:
    registry = CollectorRegistry()
    registry.register(collector)
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def values(samples, name, key="user") -> dict[str, float]:
    return {labels[key]: v for labels, v in samples.get(name, [])}


def test_per_user_series_only_for_holders(collector):
    s = scrape(collector)
    info = {labels["user"]: labels for labels, _ in s["gpuhub_server_info"]}
    assert set(info) == {"ann", "bob", "cy"}  # zed holds nothing now
    assert info["ann"] == {
        "user": "ann",
        "server": "",
        "unit": MIG,
        "pool": "mig-1g.10gb",
        "profile": "mig-1g-10gb",
        "node": "",
        "gpu_uuid": MIGG,
        "mig_uuid": MIG,
    }
    assert info["bob"]["gpu_uuid"] == GPU and info["bob"]["mig_uuid"] == ""
    assert info["bob"]["profile"] == "gpu"  # no profile chosen: the default profile (first pool)
    assert info["cy"]["unit"] == "" and info["cy"]["profile"] == "cpu"
    assert values(s, "gpuhub_server_age_seconds") == {"ann": 7200, "bob": 3600, "cy": 600}
    # bob's server has reported no activity yet: idle since it started
    assert values(s, "gpuhub_server_idle_seconds") == {"ann": 1800, "bob": 3600, "cy": 60}


def test_budgets_follow_defaults_groups_and_overrides(collector):
    s = scrape(collector)
    # this week (from Monday): ann 2 h, bob 1 h (last week's hour does not count), cy none
    assert values(s, "gpuhub_user_gpu_usage_seconds") == {"ann": 7200, "bob": 3600, "cy": 0}
    # ann: her group's 3 h replaces the default 10 h; bob: his override, 20 h; cy: the default
    assert values(s, "gpuhub_user_gpu_budget_left_seconds") == {
        "ann": 1 * 3600,
        "bob": 19 * 3600,
        "cy": 10 * 3600,
    }
    assert {labels["period"] for labels, _ in s["gpuhub_user_gpu_budget_left_seconds"]} == {"week"}


def test_pools_capacity_held_free(collector):
    s = scrape(collector)
    assert values(s, "gpuhub_pool_capacity_units", "pool") == {"gpu": 1, "mig-1g.10gb": 1}
    assert values(s, "gpuhub_pool_held_units", "pool") == {"gpu": 1, "mig-1g.10gb": 1}
    assert values(s, "gpuhub_pool_free_units", "pool") == {"gpu": 0, "mig-1g.10gb": 0}
    collector.ledger.end("c-bob", now=NOW)
    assert values(scrape(collector), "gpuhub_pool_free_units", "pool") == {"gpu": 1, "mig-1g.10gb": 0}


def test_hub_down_is_reported(collector):
    collector.state = HubState(
        collector.state.users, collector.state.groups, collector.state.read_at, ok=False
    )
    s = scrape(collector)
    assert s["gpuhub_exporter_hub_up"][0][1] == 0
    assert s["gpuhub_exporter_hub_read_timestamp_seconds"][0][1] == NOW.timestamp()
    assert "gpuhub_tutorial_sync_status_up" not in s  # sync not configured


def test_parse_time_reads_the_hubs_iso_times():
    assert parse_time("2025-03-12T12:00:00.123456Z") == pytest.approx(NOW.timestamp() + 0.123456)
    assert parse_time("2025-03-12T12:00:00+00:00") == NOW.timestamp()
    assert parse_time(None) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_sync_status_read_from_a_real_http_server(collector):
    status = {
        "repo": "https://git.example/tut.git",
        "branch": "main",
        "commit": "abc123",
        "published_at": 1700000000.0,
        "last_error": "fetch failed: timeout",
    }

    class Status(web.RequestHandler):
        def get(self):
            # like the real service: status.json is not public
            if self.request.headers.get("Authorization") != "token exporter-token":
                raise web.HTTPError(403)
            self.write(json.dumps(status))

    port = _free_port()
    server = HTTPServer(web.Application([(r"/services/tutorial-sync/status.json", Status)]))
    server.listen(port, "127.0.0.1")
    try:
        state = collector.state
        url = f"http://127.0.0.1:{port}/services/tutorial-sync/status.json"
        await read_sync(url, state)  # no token: refused, status unknown
        assert scrape(collector)["gpuhub_tutorial_sync_status_up"][0][1] == 0
        await read_sync(url, state, token="exporter-token")
        s = scrape(collector)
        assert s["gpuhub_tutorial_sync_status_up"][0][1] == 1
        assert s["gpuhub_tutorial_sync_status_info"][0][0] == {
            "repo": status["repo"],
            "branch": "main",
            "commit": "abc123",
        }
        assert s["gpuhub_tutorial_sync_status_failing"][0][1] == 1
        assert s["gpuhub_tutorial_sync_status_published_timestamp_seconds"][0][1] == 1700000000.0
        await read_sync(f"http://127.0.0.1:{port}/nothing-here", state, timeout=2)
        s = scrape(collector)
        assert s["gpuhub_tutorial_sync_status_up"][0][1] == 0 and "gpuhub_tutorial_sync_status_info" not in s
    finally:
        server.stop()


# ---- the ledger's column-only reads give what the ORM reports give -------------------------

postgres_url = postgres_fixture()


@pytest.fixture(params=["sqlite", "postgres"])
def busy_ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'busy.sqlite'}"
    else:
        url = create_database(request.getfixturevalue("postgres_url"), "t_exporter_intervals")
    ledger = UsageLedger(url)
    # intervals on every side of the period starts: before, across, inside, open, future-dated
    spans = [
        ("ann", -24 * 40, -24 * 39),  # last month, closed
        ("ann", -24 * 3 - 1, -24 * 3 + 2),  # across Monday 00:00 (NOW is Wednesday noon)
        ("ann", -5, None),  # open
        ("bob", -24 * 9, None),  # open since last week
        ("bob", -13, -11),  # across midnight today
        ("cy", -2, -1),  # closed today
        ("cy", 1, None),  # opened "after now" (clock skew): no usage yet
        ("dee", -24 * 60, -24 * 59),  # long ago only
    ]
    for i, (user, start, end) in enumerate(spans):
        holder = f"h{i}"
        ledger.start(user, "", f"GPU-{i}", "gpu", holder, node=f"n{i % 2}", now=NOW + timedelta(hours=start))
        if end is not None:
            ledger.end(holder, now=NOW + timedelta(hours=end))
    yield ledger
    ledger.dispose()


@pytest.mark.parametrize("period", ["day", "week", "month", "total"])
def test_intervals_since_give_the_same_usage_and_open_allocations(busy_ledger, period):
    since, _ = period_bounds(NOW, period)
    rows = busy_ledger.intervals_since(since)
    assert usage_seconds_by_user(rows, since, NOW) == busy_ledger.usage_by_user(since, NOW)
    open_rows = [r._asdict() for r in rows if r.ended_at is None]
    expected = busy_ledger.open_allocations()
    assert [{k: v for k, v in r.items() if k != "ended_at"} for r in open_rows] == expected
    assert [r._asdict() for r in busy_ledger.open_intervals()] == open_rows
    assert len(expected) == 3 and {r["user"] for r in expected} == {"ann", "bob", "cy"}


# ---- what a scrape serves is the library's exposition, byte for byte ------------------------


def test_snapshot_body_is_the_librarys_exposition(collector):
    odd = 'a"b\\c\nd é'  # quote, backslash, newline, non-ASCII: every escape
    collector.state.users.append(
        {"name": odd, "groups": [], "servers": {odd: {"started": iso(NOW), "user_options": {"profile": odd}}}}
    )

    class Fixed:  # the same families for both renderers (values depend on the clock)
        def __init__(self, families):
            self.families = families

        def collect(self):
            return iter(self.families)

    families = list(collector.collect())
    counter = CounterMetricFamily("gpuhub_test_things", "A counter\nwith a newline", labels=["x"])
    counter.add_metric(["y"], 3)
    families.append(counter)  # not a gauge: the exposition is the library's for every type
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))
    snapshot = Snapshot(registry)
    try:
        body = snapshot.render()
    finally:
        snapshot.close()
    assert body == generate_latest(Fixed(families))
    assert b'server="a\\"b\\\\c\\nd \xc3\xa9"' in body and b"gpuhub_test_things_total" in body


# ---- the snapshot: scrapes serve the last background render --------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def _get(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False)


def _served(body: bytes) -> dict[str, list[tuple[dict, float]]]:
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


async def test_scrapes_serve_the_snapshot_until_a_refresh(collector):
    app = HubExporterApp(metrics_scope="", prefix="/", api_url="http://127.0.0.1:9/hub/api", api_token="x")
    webapp = app.make_web_app(collector)
    snapshot = webapp.settings["snapshot"]
    clock = Clock()
    snapshot.clock = clock
    calls = []
    real_collect = collector.collect

    def counting():
        calls.append(1)
        yield from real_collect()

    collector.collect = counting
    port = _free_port()
    server = HTTPServer(webapp)
    server.listen(port, "127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        first = await _get(url)  # nothing rendered yet: this scrape renders
        assert first.code == 200 and len(calls) == 1
        assert values(_served(first.body), "gpuhub_pool_free_units", "pool") == {"gpu": 0, "mig-1g.10gb": 0}
        stamp = _served(first.body)["gpuhub_exporter_snapshot_timestamp_seconds"][0][1]
        assert stamp == snapshot.taken_at
        # bob's server stops: until the next refresh, scrapes serve the same bytes, computing nothing
        collector.ledger.end("c-bob", now=NOW)
        clock.now += snapshot.interval / 2
        again = await _get(url)
        assert again.body == first.body and len(calls) == 1
        # a refresh (the background task's, or an invalidation's) shows it
        await snapshot.refresh()
        fresh = await _get(url)
        assert len(calls) == 2
        assert values(_served(fresh.body), "gpuhub_pool_free_units", "pool") == {"gpu": 1, "mig-1g.10gb": 0}
        assert "gpuhub_exporter_snapshot_render_seconds" in _served(fresh.body)
        # renders stalled past max_age: the scrape renders itself rather than serve old values
        collector.ledger.end("c-ann", now=NOW)
        clock.now += snapshot.max_age + 1
        stale = await _get(url)
        assert len(calls) == 3
        assert values(_served(stale.body), "gpuhub_pool_free_units", "pool") == {"gpu": 1, "mig-1g.10gb": 1}
    finally:
        server.stop()
        snapshot.close()


async def test_background_task_renders_again_when_invalidated(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    snapshot = Snapshot(registry, interval=3600)  # only an invalidation can cause a second render
    task = asyncio.create_task(snapshot.run())
    try:
        for _ in range(200):
            if snapshot.renders >= 1:
                break
            await asyncio.sleep(0.02)
        assert snapshot.renders == 1
        body = snapshot.body
        collector.ledger.end("c-bob", now=NOW)
        snapshot.invalidate()
        for _ in range(200):
            if snapshot.renders >= 2:
                break
            await asyncio.sleep(0.02)
        assert snapshot.renders == 2 and snapshot.body != body
        assert values(_served(snapshot.body), "gpuhub_pool_held_units", "pool") == {
            "gpu": 0,
            "mig-1g.10gb": 1,
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        snapshot.close()


async def test_a_failing_render_is_a_failed_scrape_not_stale_data(collector):
    app = HubExporterApp(metrics_scope="", prefix="/", api_url="http://127.0.0.1:9/hub/api", api_token="x")
    webapp = app.make_web_app(collector)
    collector.ledger.dispose()
    collector.ledger.intervals_since = lambda since: (_ for _ in ()).throw(OSError("database is gone"))
    port = _free_port()
    server = HTTPServer(webapp)
    server.listen(port, "127.0.0.1")
    try:
        r = await _get(f"http://127.0.0.1:{port}/metrics")
        assert r.code == 503 and b"database is gone" not in r.body
    finally:
        server.stop()
        webapp.settings["snapshot"].close()


# ---- pool capacity on a swarm: nodes and tasks as the Docker API returns them --------------

SW_GPU_A = "GPU-a0000000-0000-4000-8000-00000000000a"
SW_GPU_B = "GPU-b0000000-0000-4000-8000-00000000000b"
SW_MIG_1 = "MIG-c0000000-0000-4000-8000-000000000001"
SW_MIG_2 = "MIG-c0000000-0000-4000-8000-000000000002"
SW_SHARED_GPU = "GPU-d0000000-0000-4000-8000-00000000000d"
SW_SHARED_KIND = shared_kind(SW_SHARED_GPU)


def _named(kind: str, value: str) -> dict:
    return {"NamedResourceSpec": {"Kind": kind, "Value": value}}


def _discrete(kind: str, value: int) -> dict:
    return {"DiscreteResourceSpec": {"Kind": kind, "Value": value}}


def _node(node_id, hostname, resources, state="ready", availability="active", labels=None, role="worker"):
    return {
        "ID": node_id,
        "Spec": {"Role": role, "Availability": availability, "Labels": {}},
        "Description": {
            "Hostname": hostname,
            "Engine": {"EngineVersion": "26.1.5", "Labels": labels or {}},
            "Resources": {"NanoCPUs": 16_000_000_000, "MemoryBytes": 64 << 30, "GenericResources": resources},
        },
        "Status": {"State": state, "Addr": f"10.0.0.{node_id[-1]}"},
    }


def _task(service_id, node_id, assigned, requested, state="running"):
    task = {
        "ID": f"t-{service_id}",
        "ServiceID": service_id,
        "NodeID": node_id,
        "DesiredState": "running",
        "Status": {"State": state, "Message": ""},
        "Spec": {"Resources": {"Reservations": {"GenericResources": requested}}},
    }
    if assigned:
        task["GenericResources"] = assigned  # the API's name for AssignedGenericResources
    return task


def _swarm_nodes(drained: str = "active") -> list[dict]:
    return [
        # gpu-1: two whole GPUs and a GPU shared as 4 time-sliced slots
        _node(
            "n1",
            "gpu-1",
            [
                _named("NVIDIA_GPU", SW_GPU_A),
                _named("NVIDIA_GPU", SW_GPU_B),
                _discrete(SW_SHARED_KIND, 4),
            ],
            labels={f"org.gpuhub.shared.{SW_SHARED_KIND}": SW_SHARED_GPU},
            role="manager",
        ),
        # gpu-2: two MIG 1g.10gb instances (drained in one test)
        _node(
            "n2",
            "gpu-2",
            [_named("NVIDIA_MIG_1G_10GB", SW_MIG_1), _named("NVIDIA_MIG_1G_10GB", SW_MIG_2)],
            availability=drained,
        ),
        # gpu-3: down, its GPU is not capacity
        _node(
            "n3", "gpu-3", [_named("NVIDIA_GPU", "GPU-e0000000-0000-4000-8000-00000000000e")], state="down"
        ),
    ]


def _swarm_tasks() -> list[dict]:
    return [
        _task("s-ann", "n2", [_named("NVIDIA_MIG_1G_10GB", SW_MIG_1)], [_discrete("NVIDIA_MIG_1G_10GB", 1)]),
        _task("s-bob", "n1", [_named("NVIDIA_GPU", SW_GPU_A)], [_discrete("NVIDIA_GPU", 1)]),
        _task("s-cy", "n1", [_discrete(SW_SHARED_KIND, 1)], [_discrete(SW_SHARED_KIND, 1)]),
        # another hub's task on the same swarm also holds a slot
        _task("s-other", "n1", [_discrete(SW_SHARED_KIND, 1)], [_discrete(SW_SHARED_KIND, 1)]),
        # a task that swarm could not place yet holds nothing
        _task("s-dee", "", [], [_discrete("NVIDIA_GPU", 1)], state="pending"),
    ]


class FakeSwarmAPI:
    """docker.APIClient's nodes/tasks/services (a FAKE manager); records the filters it was given."""

    def __init__(self, nodes, tasks, services, fail=False):
        self._nodes, self._tasks, self._services, self.fail = nodes, tasks, services, fail
        self.calls: list[tuple[str, dict | None]] = []

    def nodes(self):
        self.calls.append(("nodes", None))
        if self.fail:
            raise ConnectionError("manager unreachable")
        return self._nodes

    def tasks(self, filters=None):
        self.calls.append(("tasks", filters))
        return self._tasks

    def services(self, filters=None):
        self.calls.append(("services", filters))
        return self._services


@pytest.fixture
def swarm_collector(tmp_path):
    ledger = UsageLedger(f"sqlite:///{tmp_path / 'swarm-usage.sqlite'}")
    # what the swarm spawner recorded for its servers (node = the node's hostname)
    ledger.start(
        "ann", "", SW_MIG_1, "mig-1g.10gb", "jupyter-ann", node="gpu-2", now=NOW - timedelta(hours=1)
    )
    ledger.start("bob", "", SW_GPU_A, "gpu", "jupyter-bob", node="gpu-1", now=NOW - timedelta(hours=1))
    ledger.start("cy", "", f"{SW_SHARED_GPU}/slot-0", "shared", "jupyter-cy", node="gpu-1", now=NOW)
    state = HubState(users=[], groups={}, read_at=NOW.timestamp(), ok=True)
    settings = Settings(Inventory(), profiles_from_config([], Inventory(), require_pools=False), {})
    yield HubCollector(state, ledger, settings, clock=NOW.timestamp, swarm=SwarmState())
    ledger.dispose()


SERVICES = [
    {"ID": sid, "Spec": {"Name": f"jupyter-{sid[2:]}", "Labels": {"org.gpuhub.hub": "course-a"}}}
    for sid in ("s-ann", "s-bob", "s-cy", "s-dee")
]


async def test_swarm_pool_capacity_and_free_units_come_from_nodes_and_tasks(swarm_collector):
    api = FakeSwarmAPI(_swarm_nodes(), _swarm_tasks(), SERVICES)
    # never read yet: the swarm is reported down and capacity is absent, not zero
    s = scrape(swarm_collector)
    assert s["gpuhub_exporter_swarm_up"][0][1] == 0 and "gpuhub_pool_capacity_units" not in s
    swarm_collector.swarm = await refresh_swarm(swarm_collector.swarm, api, "course-a", [])
    assert api.calls == [
        ("nodes", None),
        ("tasks", None),
        ("services", {"label": "org.gpuhub.hub=course-a"}),
    ]
    s = scrape(swarm_collector)
    assert s["gpuhub_exporter_swarm_up"][0][1] == 1
    # gpu: A and B on gpu-1 (gpu-3 is down); bob holds A.  mig: both on gpu-2, ann holds one.
    # shared: 4 slots, cy and another hub's task hold one each.
    assert values(s, "gpuhub_pool_capacity_units", "pool") == {"gpu": 2, "mig-1g.10gb": 2, "shared": 4}
    assert values(s, "gpuhub_pool_free_units", "pool") == {"gpu": 1, "mig-1g.10gb": 1, "shared": 2}
    assert values(s, "gpuhub_pool_held_units", "pool") == {"gpu": 1, "mig-1g.10gb": 1, "shared": 1}
    nodes = {labels["node"]: labels for labels, _ in s["gpuhub_swarm_node_info"]}
    assert nodes["gpu-3"] == {
        "node": "gpu-3",
        "node_id": "n3",
        "addr": "10.0.0.3",
        "role": "worker",
        "state": "down",
        "availability": "active",
    }
    assert nodes["gpu-1"]["role"] == "manager" and nodes["gpu-2"]["state"] == "ready"
    units = {(labels["node"], labels["pool"]): v for labels, v in s["gpuhub_swarm_node_units"]}
    assert units == {
        ("gpu-1", "gpu"): 2,
        ("gpu-1", "shared"): 4,
        ("gpu-2", "mig-1g.10gb"): 2,
        ("gpu-3", "gpu"): 1,
    }
    # the swarm's units give the _info series its GPU / MIG UUIDs and the default profile
    info = {labels["user"]: labels for labels, _ in s["gpuhub_server_info"]}
    assert info["bob"]["gpu_uuid"] == SW_GPU_A and info["bob"]["profile"] == "gpu"
    assert info["ann"]["mig_uuid"] == SW_MIG_1 and info["ann"]["node"] == "gpu-2"
    assert info["cy"]["gpu_uuid"] == SW_SHARED_GPU and info["cy"]["mig_uuid"] == ""


async def test_swarm_drained_node_leaves_capacity_and_a_failed_read_keeps_the_last(swarm_collector):
    api = FakeSwarmAPI(_swarm_nodes(drained="drain"), _swarm_tasks(), SERVICES)
    swarm_collector.swarm = await refresh_swarm(swarm_collector.swarm, api, "gpuhub", [])
    s = scrape(swarm_collector)
    assert values(s, "gpuhub_pool_capacity_units", "pool") == {"gpu": 2, "mig-1g.10gb": 0, "shared": 4}
    assert values(s, "gpuhub_pool_free_units", "pool") == {"gpu": 1, "mig-1g.10gb": 0, "shared": 2}
    read_at = swarm_collector.swarm.read_at
    api.fail = True
    swarm_collector.swarm = await refresh_swarm(swarm_collector.swarm, api, "gpuhub", [])
    s = scrape(swarm_collector)
    assert s["gpuhub_exporter_swarm_up"][0][1] == 0
    assert s["gpuhub_exporter_swarm_read_timestamp_seconds"][0][1] == read_at
    assert values(s, "gpuhub_pool_capacity_units", "pool") == {"gpu": 2, "mig-1g.10gb": 0, "shared": 4}


def test_config_passes_the_swarm_to_the_exporter(tmp_path, monkeypatch):
    extra = tmp_path / "extra.py"
    extra.write_text('c.GPUDockerSpawner.gpu_hub_id = "course-a"\n')
    certs = tmp_path / "certs"  # a TCP Docker API needs mutual TLS: the hub's client certificate
    subprocess.run([str(REPO / "deploy" / "swarm" / "make-tls.sh"), str(certs), "manager"],
                   check=True, capture_output=True)
    for key, value in {
        "GPUHUB_DATA_DIR": str(tmp_path / "data"),
        "GPUHUB_HUB_IP": "127.0.0.1",
        "GPUHUB_SPAWNER": "swarm",
        "GPUHUB_DOCKER_HOST": "tcp://manager:2376",
        "GPUHUB_EXPORTER_PORT": "8768",
        "GPUHUB_EXTRA_CONFIG": str(extra),
        "GPUHUB_CULLER": "off",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(certs / "client"),
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("GITHUB_CLIENT_ID", "GPUHUB_TUTORIALS_REPO", "GPUHUB_PROMETHEUS_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(REPO)).load_config()
    services = config.JupyterHub.services.get_value([])  # the config appends: a lazy value
    exporter = next(s for s in services if s["name"] == "gpuhub-exporter")
    env = exporter["environment"]
    assert env["GPUHUB_SPAWNER"] == "swarm" and env["GPUHUB_HUB_ID"] == "course-a"
    assert env["GPUHUB_DOCKER_HOST"] == "tcp://manager:2376" and env["DOCKER_TLS_VERIFY"] == "1"
    # and the exporter reads them
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = HubExporterApp()
    assert app.on_swarm and app.hub_id == "course-a" and app.docker_host == "tcp://manager:2376"
