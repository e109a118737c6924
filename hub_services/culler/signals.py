"""The culler's I/O besides the hub's API: node agents, Docker (labels, notices, kernel probes).

On a swarm, servers on other nodes are found and reached through :mod:`.swarm`.

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
from gpuhub_spawner.node import kernel_probe
from hub_services.common.hubapi import BoundedHTTP, HubAPIError
from hub_services.culler.decide import GPUReading

log = logging.getLogger(__name__)


class SignalError(Exception):
    """A local source the culler needed failed (the agents' token file); ``str()`` says which."""


@dataclass
class AgentView:
    """GPU readings by (user, server) from every agent, and whether any agent failed."""

    readings: dict[tuple[str, str], GPUReading]
    failed: list[str]
    #: the agents are the swarm's, found where the servers' agents are (swarm.py): a server whose
    #: own node's agent answered is not made GPU-unknown by another node's failure
    discovered: bool = False


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
    agent: str = ""  # a swarm task on another node: that node's agent URL; '' on the local engine
    pool: str = ""  # the pool of its GPU unit ('' for a CPU-only server)


class Containers:
    """The hub's containers on the local engine (the hub has Docker access; so does its culler).

    ``swarm`` (a :class:`~hub_services.culler.swarm.SwarmServers`): the engine is a swarm
    manager; servers it does not run itself are found through the swarm and reached through
    their node's agent (``agents``, an :class:`~hub_services.culler.swarm.AgentCalls`).
    """

    def __init__(self, hub_id: str, notice_path: str, client: Any = None, docker_host: str = "",
                 swarm: Any = None, agents: Any = None):
        self.hub_id = hub_id
        self.notice_path = notice_path
        self.docker_host = docker_host
        self.swarm = swarm
        self.agents = agents
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker
            from docker.utils import kwargs_from_env

            kwargs: dict[str, Any] = {"timeout": 30, **kwargs_from_env()}
            if self.docker_host:
                kwargs["base_url"] = self.docker_host
            self._client = docker.DockerClient(**kwargs)
        return self._client

    def _list(self) -> dict[tuple[str, str], ContainerInfo]:
        found = {}
        for c in self.client.api.containers(filters={"label": f"{LABEL_HUB}={self.hub_id}"}):
            labels = ServerLabels.from_labels(c.get("Labels"))
            found[labels.key] = ContainerInfo(c["Id"], labels.profile, labels.unit, pool=labels.pool)
        if self.swarm is not None:
            for key, info in self.swarm.read(self.client.api).servers.items():
                found.setdefault(key, info)  # one this engine runs itself is asked here
        return found

    async def running(self) -> dict[tuple[str, str], ContainerInfo]:
        return await asyncio.to_thread(self._list)

    async def gpu_agent_urls(self) -> list[str]:
        """The swarm's GPU nodes' agents (``gpu_agent_urls`` left empty on a swarm)."""
        return (await asyncio.to_thread(self.swarm.read, self.client.api)).gpu_agents

    async def write_notice(self, container_id: str, text: str, card: str = "") -> bool:
        return await asyncio.to_thread(kernel_probe.write_notice, self.client.api, container_id, text,
                                       self.notice_path, card)

    async def probe(self, container_id: str) -> bytes | None:
        """The probe's raw output (untrusted, at most ``MAX_OUTPUT`` bytes), or None if it failed."""
        return await asyncio.to_thread(kernel_probe.run_probe, self.client.api, container_id)

    async def remove_notice(self, container_id: str) -> bool:
        return await asyncio.to_thread(kernel_probe.remove_notice, self.client.api, container_id, self.notice_path)

    # ---- either engine: the local one, or the agent of the server's node --------------------

    async def probe_server(self, info: ContainerInfo, key: tuple[str, str]) -> bytes | None:
        if info.agent:
            return await self.agents.probe(info, key)
        return await self.probe(info.id)

    async def notice(self, info: ContainerInfo, text: str, card: str = "") -> bool:
        """Write the notice file (and its JSON card, for JupyterLab) into the server's container."""
        if info.agent:
            return await self.agents.write_notice(info, text, card)
        return await self.write_notice(info.id, text, card)

    async def unnotice(self, info: ContainerInfo) -> bool:
        if info.agent:
            return await self.agents.remove_notice(info)
        return await self.remove_notice(info.id)
