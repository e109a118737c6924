"""What the hub sets when it runs in the stack (``GPUHUB_STACK`` set by deploy/stack).

- Behind Caddy the hub sees plain HTTP; ``JupyterHub.public_url`` (https) makes it build its
  links and OAuth redirects for the public name and mark its cookies Secure
  (``BaseHandler._set_cookie`` reads the public URL's scheme), and ``cookie_options`` says
  the same for every cookie, the XSRF one included.
- The proxy's public port listens only on the hub's address on the stack's internal network
  (alias ``proxy``: Caddy and Prometheus reach it there), so user servers, on the user
  network, do not reach it; the hub API listens where they do, and they reach it by the alias
  ``<stack>-hub`` (a name, so a restarted hub at a new address is found again).
- User servers are swarm services on ``<stack>_users``; the hub reaches them by their address
  there (no ports published on the nodes).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from gpuhub_spawner.deploy.stack import HUB_PORT, PROXY_PORT


def container_address(network: str) -> str:
    """This container's address on ``network`` (asked of the engine: the socket is mounted)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        networks = client.containers.get(socket.gethostname()).attrs["NetworkSettings"]["Networks"]
        return (networks.get(network) or {}).get("IPAddress", "")
    finally:
        client.close()


def apply(c: Any, stack: str, public_url: str) -> None:
    """Lay the stack's settings over ``c`` (after gpuhub.yaml's)."""
    c.JupyterHub.public_url = public_url.rstrip("/") + "/"
    if public_url.startswith("https://"):
        c.JupyterHub.cookie_options = {"secure": True}
    try:
        internal = container_address(f"{stack}_internal")
    except Exception as e:  # noqa: BLE001 - the engine must answer: the spawner needs it too
        print(f"gpuhub: cannot read this container's networks ({e}); the proxy listens on all of them",
              file=sys.stderr, flush=True)
        internal = ""
    c.JupyterHub.bind_url = f"http://{internal or '0.0.0.0'}:{PROXY_PORT}"
    c.JupyterHub.hub_ip = "0.0.0.0"
    c.JupyterHub.hub_port = HUB_PORT
    c.JupyterHub.hub_connect_url = f"http://{stack}-hub:{HUB_PORT}"
    c.GPUSwarmSpawner.network_name = f"{stack}_users"
    c.GPUSwarmSpawner.use_internal_ip = True
