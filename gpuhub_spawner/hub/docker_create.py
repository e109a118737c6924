"""What a GPU server's container is created with, through DockerSpawner's own extension points.

DockerSpawner builds the container from ``extra_create_kwargs`` and ``extra_host_config``, each
of which may be a callable of the spawner (dockerspawner 13+).  ``GPUDockerSpawner`` sets both to
:class:`WithGPU`, which evaluates what the operator configured (a dict or a callable, as
upstream allows) and adds the hub's own settings on top:

- labels: hub, user, server, profile, and the unit and pool of a GPU server (the engine's
  labels are the truth about who holds which unit);
- the unit as ``DeviceRequest(device_ids=[uuid], capabilities=[["gpu"]])``;
- memory (no swap beyond it), CPUs and PIDs, never unlimited, unless the operator set them;
- the tutorials, scratch and editable-copy volumes; ``no-new-privileges``.

DockerSpawner formats every string of these dicts with its template namespace (``{username}``);
the hub's own values are taken literally (their braces are escaped), so a user name can never
be read as a template.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from docker.types import DeviceRequest

from gpuhub_spawner.core import isolation
from gpuhub_spawner.core import labels as L
from gpuhub_spawner.core.inventory import Unit

#: docker-py's create_host_config argument for each HostConfig field of isolation.container_limits
_LIMIT_ARGS = {
    "Memory": "mem_limit",
    "MemorySwap": "memswap_limit",
    "CpuPeriod": "cpu_period",
    "CpuQuota": "cpu_quota",
    "NanoCpus": "nano_cpus",
    "PidsLimit": "pids_limit",
}


def literal(value: Any) -> Any:
    """``value`` with every brace doubled, so DockerSpawner's template formatting gives it back."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, Mapping):
        return {literal(k): literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(literal(v) for v in value)
    return value


def server_labels(hub_id: str, user: str, server: str, profile: str, unit: Unit | None,
                  group: str = "") -> dict[str, str]:
    """``group``: whose guaranteed share of the pool the server's unit counts for (core/shares.py)."""
    labels = {L.LABEL_HUB: hub_id, L.LABEL_USER: user, L.LABEL_SERVER: server, L.LABEL_PROFILE: profile}
    if unit is not None:
        labels[L.LABEL_UNIT] = unit.id
        labels[L.LABEL_POOL] = unit.pool
    if group:
        labels[L.LABEL_GROUP] = group
    return labels


def limit_args(configured: Mapping[str, Any], limits: isolation.Limits) -> dict[str, Any]:
    """create_host_config arguments for the limits the operator left unset (``configured`` holds
    what is set already, by create_host_config argument name)."""
    current = {field: configured.get(arg) for field, arg in _LIMIT_ARGS.items()}
    return {_LIMIT_ARGS[field]: value for field, value in isolation.container_limits(current, limits).items()}


def host_config_additions(configured: Mapping[str, Any], unit: Unit | None, limits: isolation.Limits,
                          mounts: list, volume_mounts: list) -> dict[str, Any]:
    """The hub's create_host_config arguments for one server, given what is configured already.

    ``mounts`` are the mounts the container has without the hub (upstream's ``mount_binds``, or
    what the operator set); ``volume_mounts`` are the hub's own volumes, added after them.
    """
    security = list(configured.get("security_opt") or [])
    if "no-new-privileges" not in security:
        security.append("no-new-privileges")
    added: dict[str, Any] = {
        "mounts": list(configured.get("mounts") or mounts) + literal(volume_mounts),
        "security_opt": literal(security),
        **limit_args(configured, limits),
    }
    if unit is not None:
        added["device_requests"] = [literal(DeviceRequest(device_ids=[unit.device_id], capabilities=[["gpu"]]))]
    return added


class WithGPU:
    """An ``extra_create_kwargs`` / ``extra_host_config`` callable: the operator's value (a dict,
    or a callable of the spawner, maybe async) with the hub's additions merged over it."""

    def __init__(self, configured: Any, add: Callable[[Any, dict[str, Any]], dict[str, Any]]):
        self.configured = configured
        self.add = add

    async def __call__(self, spawner: Any) -> dict[str, Any]:
        value = self.configured(spawner) if callable(self.configured) else self.configured
        if inspect.isawaitable(value):
            value = await value
        value = copy.deepcopy(dict(value or {}))
        return {**value, **self.add(spawner, value)}

    def __repr__(self) -> str:
        return f"WithGPU({self.configured!r})"
