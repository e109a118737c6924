"""Asking a server about its kernels from inside its own container, and reading the answer (pure).

The culler never sends its own token to a user's server.  Instead it runs :data:`PROBE_SCRIPT`
(:mod:`gpuhub_spawner.node.kernel_probe`, shared with the node agent) inside the server's
container, as the server's user, through the local Docker engine or, for a swarm task on
another node, through that node's agent: the script asks the server on its loopback with
the server's *own* ``$JUPYTERHUB_API_TOKEN`` (JupyterHub's ``server`` role gives it
``access:servers!server``) and prints one JSON line.

The container is the user's: what comes back is untrusted.  :func:`parse_probe` caps its size
and the number of kernels, and answers ``None`` for anything it cannot read, which the
decision treats as "possibly active" (a failed probe never causes a cull).
"""

from __future__ import annotations

import json
from typing import Any

from gpuhub_spawner.node.kernel_probe import MAX_OUTPUT, PROBE_COMMAND, PROBE_SCRIPT, SCRIPT_TIMEOUT
from hub_services.common.hubtime import parse_time
from hub_services.culler.decide import KernelReading

__all__ = ["MAX_KERNELS", "MAX_OUTPUT", "PROBE_COMMAND", "PROBE_SCRIPT", "SCRIPT_TIMEOUT", "parse_probe"]

#: kernels read at most; more is a failed probe
MAX_KERNELS = 1000


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        return None


def _kernel(item: Any) -> KernelReading:
    if not isinstance(item, dict):
        raise ValueError("a kernel is not an object")
    state = item.get("execution_state")
    connections = item.get("connections")
    return KernelReading(
        execution_state=state[:32] if isinstance(state, str) else "",
        last_activity=_time(item.get("last_activity")),
        connections=connections if isinstance(connections, int) and 0 <= connections < 10**6 else 0,
    )


def parse_probe(output: bytes | None) -> tuple[tuple[KernelReading, ...] | None, float | None]:
    """(kernels, server's own last activity) from the probe's output; kernels ``None`` if unreadable.

    >>> parse_probe(b'{"kernels": [{"execution_state": "busy"}], "status": {}}')[0][0].execution_state
    'busy'
    >>> parse_probe(b"not json")
    (None, None)
    """
    if not output or len(output) > MAX_OUTPUT:
        return None, None
    try:
        doc = json.loads(output)
        kernels = doc["kernels"]
        if not isinstance(kernels, list) or len(kernels) > MAX_KERNELS:
            return None, None
        readings = tuple(_kernel(k) for k in kernels)
    except (ValueError, TypeError, KeyError, RecursionError):
        return None, None
    status = doc.get("status")
    return readings, _time(status.get("last_activity")) if isinstance(status, dict) else None
