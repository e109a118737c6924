"""Container labels from the Docker engine, cached: one list call every few seconds at most,
and one inspect per container id never seen before (labels of a container never change)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from gpuhub_spawner.core.labels import LABEL_HUB, LABEL_UNIT, LABEL_USER, ServerLabels
from gpuhub_spawner.node.attribution import Server

log = logging.getLogger(__name__)

#: on a swarm, the unit is chosen after the container is defined: swarm hands it to the
#: container as DOCKER_RESOURCE_<KIND>=<uuid> (whole GPUs and MIG instances)
_SWARM_RESOURCE = "DOCKER_RESOURCE_NVIDIA_"


def unit_from_env(env: list[str] | None) -> str:
    """The GPU or MIG UUID swarm assigned, from a container's ``Config.Env`` ('' if none)."""
    for item in env or ():
        name, _, value = item.partition("=")
        # discrete kinds (a shared GPU's slots) carry a count, not a device
        if name.startswith(_SWARM_RESOURCE) and value and not value.isdigit():
            return value
    return ""


class ContainerDirectory:
    """The gpuhub server containers on this engine, and labels of any container by id.

    ``api`` is a ``docker.APIClient`` (``docker.from_env().api``).  ``hub_id`` limits servers to
    one hub's when several share an engine.  ``clock`` is for tests.
    """

    def __init__(
        self,
        api: Any,
        refresh: float = 5.0,
        hub_id: str = "",
        max_cached: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.api = api
        self.refresh = refresh
        self.hub_id = hub_id
        self.max_cached = max_cached
        self.clock = clock
        self._lock = threading.Lock()
        self._labels: OrderedDict[str, dict[str, str] | None] = OrderedDict()
        self._servers: dict[str, Server] = {}
        self._listed_at: float | None = None
        self.docker_calls = 0

    def prefill(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        """Seed the label cache (container id -> labels), e.g. for a benchmark."""
        with self._lock:
            for cid, value in labels.items():
                self._remember(cid, dict(value))

    def _remember(self, cid: str, labels: dict[str, str] | None) -> None:
        self._labels[cid] = labels
        self._labels.move_to_end(cid)
        while len(self._labels) > self.max_cached:
            self._labels.popitem(last=False)

    def _ours(self, labels: Mapping[str, str] | None) -> bool:
        parsed = ServerLabels.from_labels(labels)
        return parsed.is_server and parsed.of_hub(self.hub_id)

    def servers(self) -> dict[str, Server]:
        """Running gpuhub servers by container id (re-listed at most every ``refresh`` seconds)."""
        with self._lock:
            now = self.clock()
            if self._listed_at is None or now - self._listed_at >= self.refresh:
                filters: dict[str, Any] = {"label": [LABEL_USER], "status": "running"}
                if self.hub_id:
                    filters["label"].append(f"{LABEL_HUB}={self.hub_id}")
                self.docker_calls += 1
                listed = self.api.containers(filters=filters)
                servers = {}
                for c in listed:
                    labels = c.get("Labels") or {}
                    if not ServerLabels.from_labels(labels).unit:  # swarm: the unit is in the env
                        cached = self._labels.get(c["Id"])
                        has_unit = ServerLabels.from_labels(cached).unit
                        labels = cached if has_unit else self._inspect(c["Id"]) or labels
                    self._remember(c["Id"], labels)
                    server = Server.from_labels(c["Id"], labels)
                    if server is not None:
                        servers[c["Id"]] = server
                self._servers = servers
                self._listed_at = now
            return dict(self._servers)

    def server_of(self, cid: str) -> Server | None:
        """The gpuhub server running as container ``cid``; inspects an unknown id once."""
        with self._lock:
            if cid in self._labels:
                labels = self._labels[cid]
            else:
                labels = self._inspect(cid)
                self._remember(cid, labels)
        return Server.from_labels(cid, labels) if self._ours(labels) else None

    def _inspect(self, cid: str) -> dict[str, str] | None:
        self.docker_calls += 1
        try:
            info = self.api.inspect_container(cid)
        except Exception as e:  # noqa: BLE001 - gone, or another engine's: not ours
            log.debug("cannot inspect container %s: %s", cid[:12], e)
            return None
        config = info.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        parsed = ServerLabels.from_labels(labels)
        if parsed.is_server and not parsed.unit:
            unit = unit_from_env(config.get("Env"))
            if unit:
                labels[LABEL_UNIT] = unit
        return labels
