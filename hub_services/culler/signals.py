"""The culler's I/O besides the hub's API: node agents, Docker (labels, notices, kernel probes).

The culler's token goes to the hub only (:class:`~hub_services.common.hubapi.HubClient`):
users' servers are asked about their kernels from inside their own containers, with their
own token (:mod:`.probe`).  Agent reads go through the hub client's
:class:`~hub_services.common.hubapi.BoundedHTTP`, so a pass over thousands of servers runs
many requests at once but never more than ``concurrency``, each with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from gpuhub_spawner.core.labels import LABEL_HUB, ServerLabels
from hub_services.common.hubapi import BoundedHTTP, HubAPIError
from hub_services.culler.decide import GPUReading
from hub_services.culler.probe import MAX_OUTPUT, PROBE_COMMAND, PROBE_SCRIPT

log = logging.getLogger(__name__)


class SignalError(Exception):
    """A local source the culler needed failed (the agents' token file); ``str()`` says which."""


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


async def read_agents(http: BoundedHTTP, urls: list[str]) -> AgentView:
    """Ask every node agent for its ``/api/activity``; an agent that fails is named in ``failed``."""

    try:
        token = agent_token()
    except SignalError as e:
        log.warning("%s; every agent's servers count as GPU-busy", e)
        return AgentView(readings={}, failed=list(urls))

    async def one(url: str) -> tuple[str, Any]:
        try:
            code, body = await http.fetch(url.rstrip("/") + "/api/activity", token=token)
        except HubAPIError as e:
            return url, e
        if code != 200 or not isinstance(body, dict):
            return url, HubAPIError(code, f"answered {code}")
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
