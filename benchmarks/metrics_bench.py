"""Scrape time of the hub exporter at 1,000 users and of the node agent at 8 GPUs x 7 MIG
instances with 56 containers.  One JSON object on stdout (and to --out); see benchmarks/README.md.

Hub exporter: a real sqlite usage ledger with 1,000 open allocations (one per user, over an
inventory of 125 GPUs x 8 shared slots) and some closed history, a hub state of 1,000 users
with a running server each, in the shape the hub's REST API returns (the exporter reads the
API in the background, not per scrape), and the real collector.  Timed: HTTP GETs of
``/metrics`` with a bearer token from the service's real tornado app while its background
renders run every ``--snapshot-interval`` s as in production (the hub's token check is a stub
of ``/hub/api/user``, cached by the real HubAuth); the cost of one background render
(``refresh``: ledger read, quotas, exposition); and, in the same run, the same HTTP scrape
when every request renders (the design before the snapshot).

Node agent: a FAKE NVML (tests/support/fakes/fake_nvml.py) with 8 MIG-enabled GPUs x 7 MIG instances,
one compute process on each (56); a /proc tree in a temporary directory whose 56 cgroup files
name 56 container ids (cgroup v2 form); the container directory's label cache prefilled for the
56 containers (no Docker call during the timed scrapes; the count is reported).  Every timed
scrape takes a new sample (cache TTL 0): NVML read, 56 /proc reads, attribution, exposition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from tornado.httpclient import AsyncHTTPClient

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

from fakes.fake_nvml import FakeGPU, FakeMIG, FakeNVML, FakeProcess  # noqa: E402

from gpuhub_spawner.core.inventory import Inventory, profiles_from_config, units_from_gpus  # noqa: E402
from gpuhub_spawner.node.agent import AgentCollector, NodeAgent, make_web_app  # noqa: E402
from gpuhub_spawner.node.cgroup import ProcReader  # noqa: E402
from gpuhub_spawner.node.containers import ContainerDirectory  # noqa: E402
from gpuhub_spawner.storage.ledger import UsageLedger  # noqa: E402
from hub_services.exporter.app import HubExporterApp  # noqa: E402
from hub_services.exporter.hubmetrics import HubCollector, HubState, Settings  # noqa: E402


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def timed(fn, n: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def hub_exporter(users: int, n: int, work: Path, interval: float, gap: float) -> dict:
    gpus = [
        {"uuid": f"GPU-{i:08x}-0000-4000-8000-000000000000", "replicas": 8} for i in range((users + 7) // 8)
    ]
    inventory = Inventory(tuple(units_from_gpus(gpus)))
    units = list(inventory.units)
    ledger = UsageLedger(f"sqlite:///{work / 'usage.sqlite'}")
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    for i in range(users):
        name = f"user{i:04d}"
        # one closed interval of history earlier this week, then the open one
        ledger.start(name, "", units[i].id, units[i].pool, f"old-{name}", now=now - timedelta(hours=30))
        ledger.end(f"old-{name}", now=now - timedelta(hours=29))
        ledger.start(name, "", units[i].id, units[i].pool, f"c-{name}", now=now - timedelta(minutes=i % 240))
    fill_s = time.perf_counter() - t0
    for i in range(0, users, 10):
        ledger.set_override(f"user{i:04d}", {"gpu_hours_per_period": 20}, by="bench")
    state = HubState(
        users=[
            {
                "name": f"user{i:04d}",
                "groups": [f"course{i % 5}"],
                "servers": {
                    "": {
                        "started": iso(now - timedelta(minutes=i % 240)),
                        "last_activity": iso(now - timedelta(minutes=i % 60)),
                        "user_options": {"profile": "shared"},
                    }
                },
            }
            for i in range(users)
        ],
        groups={f"course{k}": {"gpu_hours_per_period": 5 + k} for k in range(5)},
        read_at=time.time(),
        ok=True,
    )
    settings = Settings(
        inventory, profiles_from_config([], inventory), {"gpu_hours_per_period": 10, "period": "week"}
    )
    collector = HubCollector(state, ledger, settings)
    app = HubExporterApp(
        metrics_scope="read:metrics",
        prefix="/",
        api_url="http://127.0.0.1:9/hub/api",  # replaced by the stub's URL below
        api_token="x",
        snapshot_interval=interval,
    )
    result = asyncio.run(_hub_scrapes(app, collector, n, gap))
    ledger.dispose()
    body = result.pop("body")
    return {
        "users": users,
        "open_allocations": users,
        "ledger_fill_s": round(fill_s, 2),
        "series": sum(1 for line in body.decode().splitlines() if line and not line.startswith("#")),
        "body_bytes": len(body),
        **result,
    }


class StubHubUser:
    """The hub's ``GET /hub/api/user`` for the scraper's token (a STUB of the hub: HubAuth asks
    it once, then caches the answer for 60 s, as it does in production)."""

    def __init__(self):
        self.calls = 0

    def app(self):
        from tornado import web

        stub = self

        class User(web.RequestHandler):
            def get(self):
                stub.calls += 1
                self.write({"kind": "service", "name": "prometheus", "scopes": ["read:metrics"]})

        return web.Application([(r"/hub/api/user", User)])


async def _hub_scrapes(app: HubExporterApp, collector: HubCollector, n: int, gap: float) -> dict:
    """Scrapes of the real service app over HTTP with a bearer token, while its background
    renders run as in production; then the cost of one render, and the per-request design."""
    stub = StubHubUser()
    stub_server, stub_port = _serve(stub.app())
    app.api_url = f"http://127.0.0.1:{stub_port}/hub/api"
    webapp = app.make_web_app(collector)
    snapshot = webapp.settings["snapshot"]
    server, port = _serve(webapp)
    url = f"http://127.0.0.1:{port}/metrics"
    client = AsyncHTTPClient()
    headers = {"Authorization": "Bearer scraper-token"}

    async def get() -> tuple[float, bool, bytes]:
        busy = snapshot._inflight is not None  # a background render is running
        t0 = time.perf_counter()
        resp = await client.fetch(url, headers=headers)
        took = time.perf_counter() - t0
        assert resp.code == 200
        return took, busy, resp.body

    first, _, body = await get()  # no snapshot yet: this scrape renders (once, at start-up)
    runner = asyncio.create_task(snapshot.run())
    renders_before = snapshot.renders
    t_start = time.perf_counter()
    all_times, busy_times = [], []
    for _ in range(n):
        took, busy, _ = await get()
        all_times.append(took)
        if busy:
            busy_times.append(took)
        await asyncio.sleep(gap)
    elapsed = time.perf_counter() - t_start
    renders = snapshot.renders - renders_before
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    # one refresh: what the background task does every interval (ledger read, quotas, exposition)
    refresh = await asyncio.to_thread(timed, snapshot.render, n)
    # the per-request design (what this exporter did before): every scrape computes and renders
    snapshot.max_age = -1.0
    logging.getLogger("hub_services.exporter.snapshot").setLevel(logging.ERROR)  # it warns each time
    per_request = [(await get())[0] for _ in range(n)]
    server.stop()
    stub_server.stop()
    snapshot.close()
    return {
        "snapshot_interval_s": snapshot.interval,
        "body": body,
        "http_scrape": stats(all_times),
        "http_scrape_during_refresh": stats(busy_times) if busy_times else {"n": 0},
        "first_scrape_ms": round(first * 1000, 2),
        "scrape_run_s": round(elapsed, 2),
        "refreshes_during_scrapes": renders,
        "hub_token_checks": stub.calls,
        "refresh": stats(refresh),
        "http_scrape_rendering_per_request": stats(per_request),
        "ratio_p50_snapshot_vs_per_request": round(
            statistics.median(all_times) / statistics.median(per_request), 3
        ),
    }


def _serve(webapp):
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(webapp)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def _http_times(webapp, path: str, n: int) -> list[float]:
    server, port = _serve(webapp)
    client = AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}{path}"
    await client.fetch(url)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await client.fetch(url)
        out.append(time.perf_counter() - t0)
        assert resp.code == 200
    server.stop()
    return out


class PrefilledAPI:
    """docker.APIClient stand-in: the listing returns the 56 containers; counts calls."""

    def __init__(self, listed):
        self.listed = listed
        self.calls = 0

    def containers(self, filters):
        self.calls += 1
        return self.listed

    def inspect_container(self, cid):
        self.calls += 1
        raise RuntimeError("not expected: every container is in the cache")


def node_agent(gpus: int, migs: int, n: int, work: Path) -> dict:
    proc_root = work / "proc"
    fake_gpus, listed, labels = [], [], {}
    pid = 10_000
    for g in range(gpus):
        instances = []
        for m in range(migs):
            pid += 1
            cid = f"{pid:064x}"
            mig_uuid = f"MIG-{g:04x}{m:04x}-0000-4000-8000-000000000000"
            instances.append(
                FakeMIG(
                    mig_uuid,
                    "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                    9856,
                    1,
                    m,
                    [FakeProcess(pid, 512 * 1024 * 1024)],
                )
            )
            (proc_root / str(pid)).mkdir(parents=True)
            (proc_root / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
            lab = {
                "org.gpuhub.user": f"user{pid}",
                "org.gpuhub.server": "",
                "org.gpuhub.unit": mig_uuid,
                "org.gpuhub.pool": "mig-1g.10gb",
                "org.gpuhub.profile": "mig-1g-10gb",
            }
            listed.append({"Id": cid, "Labels": lab})
            labels[cid] = lab
        fake_gpus.append(
            FakeGPU(
                f"GPU-{g:08x}-0000-4000-8000-000000000000", "NVIDIA H100 80GB HBM3", 81559, True, instances
            )
        )
    nvml = FakeNVML(fake_gpus)
    nvml.nvmlInit()
    api = PrefilledAPI(listed)
    directory = ContainerDirectory(api, refresh=3600)
    directory.prefill(labels)
    directory.servers()  # the one listing (cached for the run)
    calls_before = api.calls
    agent = NodeAgent("bench", directory, ProcReader(str(proc_root)), ttl=0, nvml=nvml)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    body = generate_latest(registry)
    per_user = body.decode().count("gpuhub_gpu_user_memory_used_bytes{")
    scrape = timed(lambda: generate_latest(registry), n)
    activity = timed(agent.activity, n)
    http = asyncio.run(_http_times(make_web_app(agent), "/metrics", n))
    return {
        "gpus": gpus,
        "mig_instances": gpus * migs,
        "containers": len(listed),
        "processes": pid - 10_000,
        "per_user_memory_series": per_user,
        "body_bytes": len(body),
        "docker_calls_during_timed_scrapes": api.calls - calls_before,
        "scrape": stats(scrape),
        "activity_json": stats(activity),
        "http_get_metrics": stats(http),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--migs", type=int, default=7)
    parser.add_argument("-n", type=int, default=200, help="timed scrapes per measurement")
    parser.add_argument(
        "--snapshot-interval", type=float, default=2.0, help="the hub exporter's (its default: 2 s)"
    )
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between timed hub exporter scrapes")
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuhub-metrics-bench-") as tmp:
        work = Path(tmp)
        print("hub exporter…", file=sys.stderr)
        hub = hub_exporter(args.users, args.n, work, args.snapshot_interval, args.gap)
        print("node agent…", file=sys.stderr)
        agent = node_agent(args.gpus, args.migs, args.n, work)
    target_ms = 100
    result = {
        "benchmark": "metrics",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "target_ms": target_ms,
        "hub_exporter": hub,
        "node_agent": agent,
        "within_target": {
            "hub_exporter_p50": hub["http_scrape"]["p50_ms"] < target_ms,
            "hub_exporter_p95": hub["http_scrape"]["p95_ms"] < target_ms,
            "hub_exporter_refresh_p95": hub["refresh"]["p95_ms"] < target_ms,
            "node_agent_p95": agent["http_get_metrics"]["p95_ms"] < target_ms,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
