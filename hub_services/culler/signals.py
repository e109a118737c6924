"""The culler's I/O: the hub's REST API, node agents, Docker (labels, notices, kernel probes).

The culler's token goes to the hub only: users' servers are asked about their kernels from
inside their own containers, with their own token (:mod:`.probe`).

Every request has a timeout and goes through one semaphore, so a pass over thousands of
servers runs many requests at once but never more than ``concurrency``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gpuhub_spawner.core.labels import LABEL_HUB, ServerLabels
from hub_services.culler.decide import GPUReading
from hub_services.culler.probe import MAX_OUTPUT, PROBE_COMMAND, PROBE_SCRIPT

log = logging.getLogger(__name__)
PAGINATION = "application/jupyterhub-pagination+json"


class SignalError(Exception):
    """A request the culler needed failed; ``str()`` says which, without secrets."""


def seg(value: str) -> str:
    return quote(value, safe="")


class HTTP:
    """tornado's client behind a semaphore, with JSON in and out."""

    def __init__(self, concurrency: int, timeout: float):
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self.timeout = timeout
        # our own client (not the loop's shared one, which allows 10 at once): the semaphore decides
        self.client = AsyncHTTPClient(force_instance=True, max_clients=max(10, concurrency))

    async def json(self, url: str, method: str = "GET", token: str = "", accept: str = "application/json",
                   body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": accept}
        if token:
            headers["Authorization"] = f"token {token}"
        data = None if body is None else json.dumps(body)
        request = HTTPRequest(
            url, method=method, headers=headers, body=data, allow_nonstandard_methods=True,
            connect_timeout=self.timeout, request_timeout=self.timeout, follow_redirects=False,
        )
        async with self.semaphore:
            try:
                response = await self.client.fetch(request, raise_error=False)
            except OSError as e:
                raise SignalError(f"{method} {_safe(url)}: {e}") from None
        if response.code == 599:
            raise SignalError(f"{method} {_safe(url)}: {response.error}")
        if not response.body:
            return response.code, None
        try:
            return response.code, json.loads(response.body)
        except ValueError:
            return response.code, None


def _safe(url: str) -> str:
    return url.split("?", 1)[0]


class Hub:
    """The hub's REST API as the culler uses it."""

    def __init__(self, http: HTTP, api_url: str, token: str, page_size: int = 200):
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.page_size = page_size

    async def _get(self, path: str, accept: str = "application/json") -> Any:
        code, body = await self.http.json(self.api_url + path, token=self.token, accept=accept)
        if code != 200:
            raise SignalError(f"GET {path.split('?')[0]}: hub answered {code}")
        return body

    async def active_users(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of users with a running or pending server (``state=active``), as they arrive."""
        offset = 0
        while True:
            query = urlencode({"state": "active", "offset": offset, "limit": self.page_size})
            page = await self._get(f"/users?{query}", accept=PAGINATION)
            if isinstance(page, list):  # a hub that does not page
                yield page
                return
            yield page.get("items", [])
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt:
                return
            offset = int(nxt["offset"])

    async def group_properties(self, name: str) -> dict[str, Any]:
        body = await self._get(f"/groups/{seg(name)}")
        return dict(body.get("properties") or {})

    async def running_servers(self, user: str) -> set[str]:
        """Names of the user's running or pending servers ("" is the default server)."""
        code, body = await self.http.json(self.api_url + f"/users/{seg(user)}", token=self.token)
        if code == 404:
            return set()
        if code != 200 or not isinstance(body, dict):
            raise SignalError(f"GET /users/{{name}}: hub answered {code}")
        return {str(name) for name in (body.get("servers") or {})}

    async def stop(self, user: str, server: str) -> int:
        path = f"/users/{seg(user)}/servers/{seg(server)}" if server else f"/users/{seg(user)}/server"
        code, _ = await self.http.json(self.api_url + path, method="DELETE", token=self.token)
        if code not in (202, 204):
            raise SignalError(f"DELETE {path}: hub answered {code}")
        return code


@dataclass
class AgentView:
    """GPU readings by (user, server) from every agent, and whether any agent failed."""

    readings: dict[tuple[str, str], GPUReading]
    failed: list[str]


def agent_token() -> str:
    """The node agents' token (``--token-file`` of gpuhub-node-agent), from the file named by
    GPUHUB_GPU_AGENT_TOKEN_FILE; empty when unset (an agent with ``--no-auth`` on loopback)."""
    path = os.environ.get("GPUHUB_GPU_AGENT_TOKEN_FILE", "")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise SignalError(f"cannot read GPUHUB_GPU_AGENT_TOKEN_FILE: {e.strerror}") from None


async def read_agents(http: HTTP, urls: list[str]) -> AgentView:
    """Ask every node agent for its ``/api/activity``; an agent that fails is named in ``failed``."""

    try:
        token = agent_token()
    except SignalError as e:
        log.warning("%s; every agent's servers count as GPU-busy", e)
        return AgentView(readings={}, failed=list(urls))

    async def one(url: str) -> tuple[str, Any]:
        try:
            code, body = await http.json(url.rstrip("/") + "/api/activity", token=token)
        except SignalError as e:
            return url, e
        if code != 200 or not isinstance(body, dict):
            return url, SignalError(f"answered {code}")
        return url, body

    readings: dict[tuple[str, str], GPUReading] = {}
    failed = []
    for url, body in await asyncio.gather(*(one(u) for u in urls)):
        if isinstance(body, Exception):
            log.warning("GPU agent %s unreachable: %s; its servers count as GPU-busy", url, body)
            failed.append(url)
            continue
        for s in body.get("servers") or []:
            try:
                key = (str(s["user"]), str(s.get("server") or ""))
                reading = GPUReading(
                    memory_used_bytes=int(s.get("memory_used_bytes") or 0),
                    process_count=int(s.get("process_count") or 0),
                    utilization_percent=None if s.get("utilization_percent") is None else int(s["utilization_percent"]),
                    mig=bool(s.get("mig")),
                )
            except (KeyError, TypeError, ValueError):
                log.warning("GPU agent %s sent an unreadable server entry; ignored", url)
                failed.append(url)
                continue
            old = readings.get(key)
            if old is not None:  # one server on two units: add up
                util = [u for u in (old.utilization_percent, reading.utilization_percent) if u is not None]
                reading = GPUReading(
                    old.memory_used_bytes + reading.memory_used_bytes,
                    old.process_count + reading.process_count,
                    max(util) if util else None,
                    old.mig or reading.mig,
                )
            readings[key] = reading
    return AgentView(readings, failed)


# ---- Docker: container labels and notice files -------------------------------------------


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    profile: str
    unit: str


class Containers:
    """The hub's containers on the local engine (the hub has Docker access; so does its culler)."""

    def __init__(self, hub_id: str, notice_path: str, client: Any = None):
        self.hub_id = hub_id
        self.notice_path = notice_path
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=30)
        return self._client

    def _list(self) -> dict[tuple[str, str], ContainerInfo]:
        found = {}
        for c in self.client.api.containers(filters={"label": f"{LABEL_HUB}={self.hub_id}"}):
            labels = ServerLabels.from_labels(c.get("Labels"))
            found[labels.key] = ContainerInfo(c["Id"], labels.profile, labels.unit)
        return found

    async def running(self) -> dict[tuple[str, str], ContainerInfo]:
        return await asyncio.to_thread(self._list)

    def _exec(self, container_id: str, script: str, env: dict[str, str]) -> int:
        result = self.client.api.exec_create(container_id, ["sh", "-c", script], user="1000", environment=env)
        self.client.api.exec_start(result["Id"])
        return int(self.client.api.exec_inspect(result["Id"]).get("ExitCode") or 0)

    async def write_notice(self, container_id: str, text: str) -> bool:
        script = 'printf "%s" "$GPUHUB_NOTICE" > "$GPUHUB_NOTICE_PATH.tmp" && mv -f "$GPUHUB_NOTICE_PATH.tmp" "$GPUHUB_NOTICE_PATH"'
        env = {"GPUHUB_NOTICE": text, "GPUHUB_NOTICE_PATH": self.notice_path}
        return await asyncio.to_thread(self._exec, container_id, script, env) == 0

    def _probe(self, container_id: str) -> bytes | None:
        api = self.client.api
        result = api.exec_create(container_id, ["sh", "-c", PROBE_COMMAND], user="1000",
                                 environment={"GPUHUB_PROBE": PROBE_SCRIPT})
        out = bytearray()
        for stdout, _stderr in api.exec_start(result["Id"], stream=True, demux=True):
            out += stdout or b""
            if len(out) > MAX_OUTPUT:
                return None  # the user's container talks too much: not an answer
        if int(api.exec_inspect(result["Id"]).get("ExitCode") or 0) != 0:
            return None
        return bytes(out)

    async def probe(self, container_id: str) -> bytes | None:
        """The probe's raw output (untrusted, at most ``MAX_OUTPUT`` bytes), or None if it failed."""
        return await asyncio.to_thread(self._probe, container_id)

    async def remove_notice(self, container_id: str) -> bool:
        env = {"GPUHUB_NOTICE_PATH": self.notice_path}
        return await asyncio.to_thread(self._exec, container_id, 'rm -f "$GPUHUB_NOTICE_PATH"', env) == 0
