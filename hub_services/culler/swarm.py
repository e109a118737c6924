"""The culler on a swarm: servers on other nodes, reached through their node's agent.

The culler runs beside the hub on a manager; a user's server is a swarm task on some worker,
whose container the manager's engine cannot exec in.  :func:`swarm_view` (pure) reads, from
the manager's ``nodes``, ``services`` and ``tasks``, where each of this hub's servers runs and
the URL of that node's agent (``agent_url``, by default ``http://<node address>:9469``, where
``gpuhub node agent install`` publishes it); :class:`AgentCalls` asks that agent to run the
kernel probe or write the notice (``gpuhub_spawner/node/agent_servers.py``) with the agents'
token (``GPUHUB_GPU_AGENT_TOKEN_FILE``), which never reaches a user's server.

The same read gives the GPU-activity agents when ``gpu_agent_urls`` is empty: every ready node
labelled ``gpuhub.gpu=true``, as Prometheus finds them (``deploy/prometheus/prometheus.yml``).
A failed agent call is a failed probe (the server is kept: ``probe-failed``), never a cull.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gpuhub_spawner.core.labels import LABEL_HUB, ServerLabels
from hub_services.common.hubapi import BoundedHTTP, HubAPIError
from hub_services.culler.signals import ContainerInfo, SignalError, agent_token

log = logging.getLogger(__name__)
#: where a node's agent answers, from the node's swarm address and hostname
AGENT_URL = "http://{addr}:9469"
#: the node label that marks a GPU node running an agent (Prometheus's job keeps the same)
GPU_NODE_LABEL = "gpuhub.gpu"


@dataclass
class SwarmView:
    """This hub's running servers on the swarm (each with its node's agent) and the GPU agents."""

    servers: dict[tuple[str, str], ContainerInfo]
    gpu_agents: list[str]


def _node_url(node: Mapping[str, Any], agent_url: str) -> str:
    addr = (node.get("Status") or {}).get("Addr") or ""
    if not addr or addr == "0.0.0.0":
        return ""
    hostname = (node.get("Description") or {}).get("Hostname") or ""
    return agent_url.format(addr=addr, hostname=hostname)


def swarm_view(nodes: list[Mapping[str, Any]], services: list[Mapping[str, Any]], tasks: list[Mapping[str, Any]],
               hub_id: str, agent_url: str = AGENT_URL, gpu_label: str = GPU_NODE_LABEL) -> SwarmView:
    """Where this hub's servers run and which agents serve GPU activity (pure: API dicts in)."""
    urls = {n.get("ID", ""): _node_url(n, agent_url) for n in nodes}
    gpu_agents = sorted(
        urls[n.get("ID", "")] for n in nodes
        if ((n.get("Spec") or {}).get("Labels") or {}).get(gpu_label) == "true"
        and (n.get("Status") or {}).get("State") == "ready" and urls[n.get("ID", "")]
    )
    labels = {}
    for s in services:
        parsed = ServerLabels.from_labels((s.get("Spec") or {}).get("Labels"))
        if parsed.is_server and parsed.of_hub(hub_id):
            labels[s.get("ID", "")] = parsed
    servers = {}
    for t in tasks:
        status = t.get("Status") or {}
        parsed = labels.get(t.get("ServiceID", ""))
        cid = (status.get("ContainerStatus") or {}).get("ContainerID") or ""
        url = urls.get(t.get("NodeID", ""), "")
        if parsed is None or status.get("State") != "running" or t.get("DesiredState") != "running":
            continue
        if cid and url:
            servers[parsed.key] = ContainerInfo(cid, parsed.profile, parsed.unit, agent=url, pool=parsed.pool)
    return SwarmView(servers, gpu_agents)


class SwarmServers:
    """Reads :func:`swarm_view` through the manager's engine (``api``: a ``docker.APIClient``;
    blocking, run it in a thread)."""

    def __init__(self, hub_id: str, agent_url: str = AGENT_URL, gpu_label: str = GPU_NODE_LABEL):
        self.hub_id = hub_id
        self.agent_url = agent_url
        self.gpu_label = gpu_label

    def read(self, api: Any) -> SwarmView:
        nodes = api.nodes()
        services = api.services(filters={"label": f"{LABEL_HUB}={self.hub_id}"})
        tasks = api.tasks(filters={"desired-state": "running"}) if services else []
        return swarm_view(nodes, services, tasks, self.hub_id, self.agent_url, self.gpu_label)


class AgentCalls:
    """The culler's requests to a node agent about one server (the agents' token, bounded HTTP)."""

    def __init__(self, http: BoundedHTTP):
        self.http = http

    async def _call(self, info: ContainerInfo, what: str, method: str, body: Any = None) -> dict[str, Any] | None:
        url = f"{info.agent.rstrip('/')}/api/servers/{quote(info.id, safe='')}/{what}"
        try:
            code, doc = await self.http.fetch(url, method=method, token=agent_token(), body=body)
        except (HubAPIError, SignalError) as e:
            log.warning("Node agent %s: %s %s failed: %s", info.agent, method, what, e)
            return None
        if code != 200 or not isinstance(doc, dict):
            error = doc.get("error") if isinstance(doc, dict) else ""
            log.warning("Node agent %s refused %s %s (%s): %s", info.agent, method, what, code, str(error)[:200])
            return None
        return doc

    async def probe(self, info: ContainerInfo, key: tuple[str, str]) -> bytes | None:
        """The probe's raw output from the server's node, or None (the culler keeps the server)."""
        doc = await self._call(info, "probe", "POST")
        if doc is None:
            return None
        if (doc.get("user"), doc.get("server")) != key or not isinstance(doc.get("output"), str):
            log.warning("Node agent %s answered for another server than %s; ignored", info.agent, "/".join(key))
            return None
        return doc["output"].encode("utf-8", "replace")

    async def write_notice(self, info: ContainerInfo, text: str, card: str = "") -> bool:
        return await self._call(info, "notice", "PUT", {"text": text, "card": card}) is not None

    async def remove_notice(self, info: ContainerInfo) -> bool:
        return await self._call(info, "notice", "DELETE") is not None
