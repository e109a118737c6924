"""Apply :mod:`gpuhub_spawner.core.isolation` on this host: the user network and the firewall chain.

Called from ``jupyterhub_config.py`` while the hub starts (single host); every failure is an
:class:`IsolationError` whose message says what is wrong and what to do, and the hub refuses
to start on it (fail closed) unless the operator turned the firewall off on purpose.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gpuhub_spawner.core import isolation

log = logging.getLogger(__name__)

LOCK_PATH = Path("/run/lock/gpuhub-isolation.lock")
_TCP_LISTEN = "0A"


class IsolationError(Exception):
    """The user network or the firewall cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class UserNetwork:
    name: str
    gateway: str
    interface: str

    @property
    def chain(self) -> str:
        return isolation.chain_name(self.name)


@contextmanager
def _host_lock() -> Iterator[None]:
    """One hub at a time sets up networks and rules on this host (hubs may start together)."""
    path = LOCK_PATH if os.access(LOCK_PATH.parent, os.W_OK) else Path("/tmp/gpuhub-isolation.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_user_network(name: str, client=None) -> UserNetwork:
    """Create the user network ``name`` (or check the one there) and return its gateway."""
    problem = isolation.network_name_problem(name)
    if problem:
        raise IsolationError(problem)
    import docker
    import requests

    own = client is None
    try:
        client = client or docker.from_env(timeout=15)
        with _host_lock():
            found = client.networks.list(names=[name])
            found = [n for n in found if n.name == name]
            if len(found) > 1:
                raise IsolationError(
                    f"There are {len(found)} Docker networks named '{name}'. Remove them "
                    f"(docker network rm {name}) and start the hub again: it creates one."
                )
            network = found[0] if found else client.networks.create(**isolation.network_spec(name))
            network.reload()
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise IsolationError(
            f"Cannot set up the user network '{name}': the Docker engine answered {_short(e)}. "
            "Start Docker (or fix it) and start the hub again."
        ) from None
    finally:
        if own and client is not None:
            client.close()
    attrs = network.attrs
    problem = isolation.network_problem(name, attrs)
    if problem:
        raise IsolationError(problem)
    return UserNetwork(name, isolation.network_gateway(attrs) or "", isolation.network_interface(attrs))


def _short(error: Exception) -> str:
    text = getattr(error, "explanation", None) or str(error)
    return repr(str(text).splitlines()[0][:200]) if text else type(error).__name__


def listening_tcp_ports() -> set[int]:
    """TCP ports something listens on in this network namespace (from /proc/net/tcp{,6})."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise IsolationError(
            "Cannot install the firewall that keeps user servers away from this host's services: "
            f"iptables {args[0]} failed ({message[0] if message else result.returncode}). "
            "Fix iptables, or install the rules yourself and set GPUHUB_USER_FIREWALL=off "
            "(README, 'Limits and networking')."
        )
    return result


def install_firewall(network: UserNetwork, hub_ip: str, hub_port: int) -> None:
    """Containers on ``network`` may reach the hub API on this host, and nothing else here."""
    if os.geteuid() != 0:
        raise IsolationError(
            "The hub is not running as root, so it cannot install the firewall that keeps user "
            "servers away from this host's services (node agent, Prometheus, databases). Run the "
            "hub as root, or install the rules yourself and set GPUHUB_USER_FIREWALL=off "
            "(README, 'Limits and networking')."
        )
    if shutil.which("iptables") is None:
        raise IsolationError(
            "iptables is not installed, so the hub cannot install the firewall that keeps user "
            "servers away from this host's services. Install it (apt-get install iptables) and "
            "start the hub again, or set GPUHUB_USER_FIREWALL=off (README, 'Limits and networking')."
        )
    chain = network.chain
    with _host_lock():
        if _iptables("-S", chain, check=False).returncode != 0:
            _iptables("-N", chain)
        existing = isolation.parse_chain(_iptables("-S", chain).stdout.splitlines(), chain)
        now = time.time()
        for command in isolation.plan_chain(chain, existing, hub_ip, hub_port, listening_tcp_ports(), now):
            _iptables(*command)
        jump = isolation.jump_rule(chain, network.interface)
        if _iptables("-C", *jump, check=False).returncode != 0:
            _iptables("-I", jump[0], "1", *jump[1:])
    log.info("Firewall %s: containers on %s reach only %s:%s on this host", chain, network.name, hub_ip, hub_port)


def remove_user_isolation(name: str, client=None) -> None:
    """Remove the network ``name``, its chain and its jump (tests; operators tearing down)."""
    import docker

    chain = isolation.chain_name(name)
    client = client or docker.from_env(timeout=15)
    with _host_lock():
        for network in client.networks.list(names=[name]):
            if network.name != name:
                continue
            network.remove()
        for line in _iptables("-S", "INPUT").stdout.splitlines():
            words = line.split()
            if words[:2] == ["-A", "INPUT"] and words[-2:] == ["-j", chain]:
                _iptables("-D", "INPUT", *words[2:], check=False)
        if _iptables("-S", chain, check=False).returncode == 0:
            _iptables("-F", chain)
            _iptables("-X", chain)
