"""What the hub sets when it runs in the stack (``GPUHUB_STACK`` set by deploy/stack).

- Behind Caddy the hub sees plain HTTP; ``JupyterHub.public_url`` (https) makes it build its
  links and OAuth redirects for the public name and mark its cookies Secure
  (``BaseHandler._set_cookie`` reads the public URL's scheme), and tornado's
  ``cookie_options`` says the same for every cookie, the XSRF one included.
- The proxy's public port listens only on the hub's address on the stack's internal network
  (alias ``proxy``: Caddy and Prometheus reach it there), so user servers, on the user
  network, do not reach it; the hub API listens where they do, and they reach it by the alias
  ``<stack>-hub`` (a name, so a restarted hub at a new address is found again; it is also the
  container's host name, so the proxy and the services find the hub before swarm's DNS lists it).
- User servers are swarm services on ``<stack>_users``; the hub reaches them by their address
  there (no ports published on the nodes).
- A Start is answered within :data:`FIRST_ANSWER_SECONDS`: JupyterHub holds the request for
  ``slow_spawn_timeout`` (10 s by default) hoping the server comes up; in a workshop burst most
  starts wait in line or take longer, so everyone stared at a spinner for 10 s.  A refusal that
  admission decides within that time is still the request's answer (503 with the reason); one
  decided later reaches the user as the spawn's failure on the progress page, with the same words.
  The hub's one event loop also serves every other Start of a burst in that time (JupyterHub's
  database work for each), so the answer leaves later than the timer: 0.5 s gave first answers
  of 0.8–1.4 s in the workshop-day burst of 30; 0.3 s gave 0.75 s to the REST API and 1.06 s to
  the browser (its Navigation Timing, under CI's two lanes).  0.1 s was tried: 0.69 s and 0.74 s
  with the workshop tests alone, but 2.75 s and 3.17 s in one CI run, so 0.3 s stays until more
  runs tell them apart.  A refusal decided later than this comes as the spawn's failure on the
  progress page rather than as the form again with the message.
"""

from __future__ import annotations

import re
import socket
import sys
from typing import Any

from gpuhub_spawner.deploy.stack import HEALTH_URL_FILE, HUB_PORT, PROXY_PORT

#: seconds JupyterHub holds a Start before answering 202 (the issue's bar: every first answer in 1 s)
FIRST_ANSWER_SECONDS = 0.3


def own_container_id(mountinfo: str) -> str:
    """This container's id, from the engine's files bind-mounted into it (``/etc/hostname`` comes
    from ``.../containers/<id>/hostname``): the host name is the service's, not the id."""
    found = re.search(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf) ", mountinfo)
    return found.group(1) if found else socket.gethostname()


def container_address(network: str) -> str:
    """This container's address on ``network`` (asked of the engine: the socket is mounted)."""
    import docker

    with open("/proc/self/mountinfo") as f:
        me = own_container_id(f.read())
    client = docker.from_env(timeout=10)
    try:
        networks = client.containers.get(me).attrs["NetworkSettings"]["Networks"]
        return (networks.get(network) or {}).get("IPAddress", "")
    finally:
        client.close()


def apply(c: Any, stack: str, public_url: str) -> None:
    """Lay the stack's settings over ``c`` (after gpuhub.yaml's)."""
    c.JupyterHub.public_url = public_url.rstrip("/") + "/"
    settings = dict(c.JupyterHub.get("tornado_settings", {}))
    settings.setdefault("slow_spawn_timeout", FIRST_ANSWER_SECONDS)  # an operator's own value wins
    if public_url.startswith("https://"):
        # tornado's cookie_options (JupyterHub hands tornado_settings to its handlers): every
        # cookie it sets, the XSRF one included, is Secure
        settings["cookie_options"] = {**settings.get("cookie_options", {}), "secure": True}
    c.JupyterHub.tornado_settings = settings
    try:
        internal = container_address(f"{stack}_internal")
    except Exception as e:  # noqa: BLE001 - the engine must answer: the spawner needs it too
        print(f"gpuhub: cannot read this container's networks ({e}); the proxy listens on all of them",
              file=sys.stderr, flush=True)
        internal = ""
    c.JupyterHub.bind_url = f"http://{internal or '0.0.0.0'}:{PROXY_PORT}"
    with open(HEALTH_URL_FILE, "w") as f:  # the service's health check reads it
        f.write(f"http://{internal or '127.0.0.1'}:{PROXY_PORT}/hub/health\n")
    # the hub API on every network of the container (explicit: with a connect URL, JupyterHub
    # would otherwise bind to the connect URL's name), reached by its alias on the user network
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{HUB_PORT}"
    c.JupyterHub.hub_connect_url = f"http://{stack}-hub:{HUB_PORT}"
    c.GPUSwarmSpawner.network_name = f"{stack}_users"
    c.GPUSwarmSpawner.use_internal_ip = True
