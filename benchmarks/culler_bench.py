"""One culler pass over 2,000 users / 500 running servers: gpuhub's culler vs jupyterhub-idle-culler.

A real JupyterHub (with its real proxy) runs a tiny spawner (:class:`CheapSpawner`) whose
servers all point at one shared lightweight HTTP process answering ``/user/<name>/api``,
``api/kernels`` and ``api/status`` under each user's prefix, so 500 servers cost nothing.
Both cullers make their pass against the same hub, in the same run, with the same request
concurrency, in alternating order:

- ``keep``: every server active (timeouts of an hour): a pass that culls nothing;
- ``cull``: every server idle past its timeout: a pass that stops all 500 (gpuhub's culler
  with ``warn_seconds=0`` so both stop at once; it also reads a GPU node agent, which
  jupyterhub-idle-culler does not).  The bench's servers have no containers, so gpuhub's
  culler asks no kernels here (``idle_without_probe``): in a real hub it asks each server it
  is about to warn or cull, from inside its container (one ``docker exec``).

One JSON object on stdout; progress on stderr.  Needs ``configurable-http-proxy`` and the
``bench`` extra (``pip install -e .[bench]``).  See benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from argparse import ArgumentParser
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpuhub_spawner.storage.notices import NoticeStore  # noqa: E402
from hub_services.common.hubapi import BoundedHTTP, HubClient  # noqa: E402
from hub_services.culler.core import Context, Settings, run_once  # noqa: E402
from hub_services.culler.metrics import CullerMetrics  # noqa: E402

log = logging.getLogger("culler-bench")
OLD = "2020-01-01T00:00:00.000000Z"


# ---- the cheap servers ------------------------------------------------------------------


def serve_fake(port: int) -> None:
    """The shared process every benchmark server points at (run as a subprocess)."""
    from tornado import web
    from tornado.ioloop import IOLoop

    class Api(web.RequestHandler):
        def get(self, rest: str) -> None:
            self.set_header("Content-Type", "application/json")
            if rest.endswith("api/kernels"):
                self.finish(json.dumps([{"id": "k", "name": "python3", "last_activity": OLD,
                                         "execution_state": "idle", "connections": 0}]))
            elif rest.endswith("api/status"):
                self.finish(json.dumps({"started": OLD, "last_activity": OLD, "connections": 0, "kernels": 1}))
            elif rest == "api/activity":  # a GPU node agent with no GPU servers
                self.finish(json.dumps({"node": "bench", "time": time.time(), "servers": []}))
            else:
                self.finish("{}")

    web.Application([(r"/(.*)", Api)]).listen(port, "127.0.0.1")
    IOLoop.current().start()


SPAWNER = '''
from jupyterhub.spawner import Spawner


class CheapSpawner(Spawner):
    """A server that is a prefix on one shared HTTP process: start and stop cost nothing."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._running = False

    async def start(self):
        self._running = True
        return ("127.0.0.1", {fake_port})

    async def stop(self, now=False):
        self._running = False

    async def poll(self):
        return None if self._running else 0
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_config(workdir: Path, fake_port: int, tokens: dict[str, str]) -> Path:
    (workdir / "cheap_spawner.py").write_text(SPAWNER.replace("{fake_port}", str(fake_port)))
    culler_scopes = ["list:users", "read:users:activity", "read:users:groups", "read:servers", "read:groups",
                     "delete:servers"]
    idle_scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    config = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(workdir)!r})
        c.JupyterHub.spawner_class = "cheap_spawner.CheapSpawner"
        c.JupyterHub.authenticator_class = "null"
        c.JupyterHub.bind_url = "http://127.0.0.1:{free_port()}"
        c.JupyterHub.hub_port = {free_port()}
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
        c.JupyterHub.db_url = "sqlite:///{workdir / 'hub.sqlite'}"
        c.JupyterHub.cookie_secret = bytes.fromhex({secrets.token_hex(32)!r})
        c.JupyterHub.concurrent_spawn_limit = 0
        c.JupyterHub.active_server_limit = 0
        c.JupyterHub.last_activity_interval = 3600
        c.JupyterHub.cleanup_servers = True
        c.Spawner.http_timeout = 60
        c.JupyterHub.services = [
            {{"name": "bench", "api_token": {tokens['bench']!r}}},
            {{"name": "gpuhub-culler", "api_token": {tokens['gpuhub']!r}}},
            {{"name": "idle-culler", "api_token": {tokens['idle']!r}}},
        ]
        c.JupyterHub.load_roles = [
            {{"name": "bench", "scopes": ["admin:users", "admin:servers"], "services": ["bench"]}},
            {{"name": "gpuhub-culler", "scopes": {culler_scopes!r}, "services": ["gpuhub-culler"]}},
            {{"name": "idle-culler", "scopes": {idle_scopes!r}, "services": ["idle-culler"]}},
        ]
        """
    )
    path = workdir / "bench_config.py"
    path.write_text(config)
    return path


class BenchHub:
    def __init__(self, workdir: Path, fake_port: int):
        self.tokens = {k: secrets.token_hex(16) for k in ("bench", "gpuhub", "idle")}
        self.config = hub_config(workdir, fake_port, self.tokens)
        text = self.config.read_text()
        self.url = text.split('bind_url = "', 1)[1].split('"', 1)[0]
        self.api = self.url + "/hub/api"
        self.workdir = workdir
        self.http = AsyncHTTPClient(force_instance=True, max_clients=20)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.workdir / "hub.log", "wb")  # noqa: SIM115 - the subprocess keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
                                     cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def call(self, method: str, path: str, body: Any = None, ok=(200, 201, 202, 204)) -> Any:
        req = HTTPRequest(self.api + path, method=method, headers={"Authorization": f"token {self.tokens['bench']}"},
                          body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
                          request_timeout=120)
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code not in ok:
            raise RuntimeError(f"{method} {path}: {resp.code} {resp.body[:200]!r}")
        return json.loads(resp.body) if resp.body else None

    async def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await self.call("GET", "/")
                return
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.5)
        raise RuntimeError("hub did not start; see hub.log")

    async def start_servers(self, names: list[str]) -> None:
        sem = asyncio.Semaphore(20)

        async def one(name: str) -> None:
            async with sem:
                await self.call("POST", f"/users/{name}/server", {}, ok=(201, 202, 400))  # 400: running

        await asyncio.gather(*(one(n) for n in names))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until every server is ready
            if await self.count_ready() >= len(names):
                return
            await asyncio.sleep(0.5)
        raise RuntimeError("servers did not all become ready")

    async def count_ready(self) -> int:
        req = HTTPRequest(self.api + "/users?state=ready&limit=1",
                          headers={"Authorization": f"token {self.tokens['bench']}",
                                   "Accept": "application/jupyterhub-pagination+json"})
        resp = await self.http.fetch(req)
        return int(json.loads(resp.body)["_pagination"]["total"])


# ---- the two passes ---------------------------------------------------------------------


async def idle_culler_pass(hub: BenchHub, inactive_limit: int, concurrency: int, page_size: int) -> float:
    from jupyterhub_idle_culler import cull_idle

    started = time.perf_counter()
    await cull_idle(url=hub.api, api_token=hub.tokens["idle"], inactive_limit=inactive_limit,
                    logger=logging.getLogger("idle-culler"), concurrency=concurrency,
                    api_page_size=page_size)
    return time.perf_counter() - started


async def gpuhub_pass(hub: BenchHub, ctx: Context, idle_seconds: float) -> tuple[float, dict[str, int]]:
    # the bench's servers have no containers (containers=None): decide on hub and GPU signals,
    # as jupyterhub-idle-culler does (kernel probes run inside containers, one exec each)
    settings = Settings(idle_cpu_seconds=idle_seconds, idle_gpu_seconds=idle_seconds, warn_seconds=0,
                        idle_without_probe=True)
    started = time.perf_counter()
    results = await run_once(ctx, settings)
    took = time.perf_counter() - started
    actions: dict[str, int] = {}
    for r in results:
        actions[r["action"]] = actions.get(r["action"], 0) + 1
    return took, actions


async def bench(args: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="culler-bench-"))
    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(fake_port)])
    hub = BenchHub(workdir, fake_port)
    hub.start()
    try:
        await hub.wait_up()
        users = [f"u{i:05d}" for i in range(args.users)]
        for i in range(0, len(users), 500):
            await hub.call("POST", "/users", {"usernames": users[i:i + 500]}, ok=(201, 409))
        running = users[: args.servers]
        db = f"sqlite:///{workdir / 'usage.sqlite'}"
        http = BoundedHTTP(args.concurrency, 60)
        from gpuhub_spawner.storage.ledger import UsageLedger

        ctx = Context(http=http, hub=HubClient(hub.api, hub.tokens["gpuhub"], page_size=args.page_size, http=http),
                      metrics=CullerMetrics(), agent_urls=[f"http://127.0.0.1:{fake_port}"], containers=None,
                      ledger=UsageLedger(db), notices=NoticeStore(db))
        out: dict[str, Any] = {"keep": [], "cull": []}
        for round_ in range(args.rounds):
            order = ["idle", "gpuhub"] if round_ % 2 == 0 else ["gpuhub", "idle"]
            for scenario in ("keep", "cull"):
                entry: dict[str, Any] = {"round": round_, "order": order}
                for who in order:
                    t0 = time.perf_counter()
                    await hub.start_servers(running)
                    log.info("round %d %s: %d servers ready in %.1fs", round_, scenario, len(running),
                             time.perf_counter() - t0)
                    if scenario == "cull":
                        await asyncio.sleep(1.5)  # every server idle past the 1 s timeout
                    limit = 3600 if scenario == "keep" else 1
                    if who == "idle":
                        entry["idle_culler_s"] = round(await idle_culler_pass(hub, limit, args.concurrency, args.page_size), 3)
                    else:
                        took, actions = await gpuhub_pass(hub, ctx, limit)
                        entry["gpuhub_s"], entry["gpuhub_actions"] = round(took, 3), actions
                    left = await hub.count_ready()
                    entry[f"{who}_servers_left"] = left
                    log.info("round %d %s %s: %s", round_, scenario, who, entry)
                entry["ratio"] = round(entry["gpuhub_s"] / entry["idle_culler_s"], 3)
                out[scenario].append(entry)
        for scenario in ("keep", "cull"):
            ratios = sorted(e["ratio"] for e in out[scenario])
            out[f"{scenario}_ratio_median"] = ratios[len(ratios) // 2]
        out["met"] = all(out[f"{s}_ratio_median"] <= 1.0 for s in ("keep", "cull"))
        return out
    finally:
        hub.stop()
        fake.terminate()


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight, the same for both")
    parser.add_argument("--page-size", type=int, default=200, help="users per page, the same for both")
    parser.add_argument("--serve-fake", type=int, help=argparse_hidden())
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake)
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    log.setLevel(logging.INFO)
    result = {
        "benchmark": "culler_pass",
        "users": args.users,
        "running_servers": args.servers,
        "concurrency": args.concurrency,
        "page_size": args.page_size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load1_before": round(os.getloadavg()[0], 2)},
        "versions": {"jupyterhub": version("jupyterhub"), "jupyterhub-idle-culler": version("jupyterhub-idle-culler")},
        "target": "gpuhub pass no slower than jupyterhub-idle-culler's (ratio <= 1.0)",
        **asyncio.run(bench(args)),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
