"""User servers are untrusted: their default limits, their network and the host firewall (pure).

Three things keep one attendee from hurting the others or the host:

- **limits** on every server (memory with no swap beyond it, CPUs, PIDs): a profile's or a
  quota's value wins, the spawner's default applies when neither sets one, so "no limit" is
  never what a server gets by accident;
- **a user network** (a Docker bridge the hub creates) with container-to-container traffic
  off, so a server cannot open another user's server port (TensorBoard, Dask, JupyterLab);
- **a host firewall** chain, jumped to from ``INPUT`` for that bridge, that lets a container
  reach on the host only the hub API port (and replies to connections the host opened);
  the node agent, Prometheus, PostgreSQL, the proxy's API and the hub services stay out of reach.

This module builds the specs and the rule lists; :mod:`gpuhub_spawner.hub.isolation_host` applies
them (Docker API, ``iptables``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuhub_spawner.core.quotas import BOUNDS
from gpuhub_spawner.core.sizes import check_size, read_size

# ---- limits ---------------------------------------------------------------------------

DEFAULT_MEM_LIMIT = "8G"
DEFAULT_CPU_LIMIT = 2.0
DEFAULT_PIDS_LIMIT = 2048
CPU_PERIOD = 100_000  # microseconds: CFS quota = CPUs x period



@dataclass(frozen=True)
class Limits:
    """What one server may use: memory bytes (RAM + swap together), CPUs, processes/threads."""

    memory: int
    cpus: float
    pids: int


def parse_memory(value: Any) -> int:
    """Bytes of a memory limit within ``quotas.BOUNDS`` (6M to 64T), in gpuhub's one size grammar
    (:func:`gpuhub_spawner.core.sizes.read_size`: ``"8G"``, ``"512M"``, ``"1.5G"``, bytes); SizeError
    (a ValueError) otherwise."""
    low, high = BOUNDS["mem_limit"]
    return check_size(value, int(low), int(high), read=read_size)


def resolve_limits(
    profile_memory: int | None,
    profile_cpus: float | None,
    quota_memory: int | None,
    quota_cpus: float | None,
    defaults: Limits,
) -> Limits:
    """The limits of one server: the stricter of the profile's and the quota's, else the default."""
    memories = [m for m in (profile_memory, quota_memory) if m]
    cpus = [c for c in (profile_cpus, quota_cpus) if c]
    return Limits(
        memory=min(memories) if memories else defaults.memory,
        cpus=min(cpus) if cpus else defaults.cpus,
        pids=defaults.pids,
    )


def container_limits(host_config: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The container ``HostConfig`` entries that set ``limits`` where nothing set them yet.

    Values already there (``c.DockerSpawner.mem_limit``/``cpu_limit``, ``extra_host_config``)
    are kept; 0 counts as unset, since for the engine it means "no limit". Swap is capped at
    the memory limit (``MemorySwap`` is RAM + swap), so a server cannot page the host to death.
    """
    out: dict[str, Any] = {}
    memory = host_config.get("Memory") or limits.memory
    if not host_config.get("Memory"):
        out["Memory"] = memory
    if not host_config.get("MemorySwap"):
        out["MemorySwap"] = memory
    if not (host_config.get("CpuQuota") or host_config.get("NanoCpus")):
        out["CpuPeriod"] = CPU_PERIOD
        out["CpuQuota"] = max(1000, int(limits.cpus * CPU_PERIOD))
    if not host_config.get("PidsLimit") or host_config["PidsLimit"] < 0:
        out["PidsLimit"] = limits.pids
    return out


def service_limits(limits_spec: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Swarm ``TaskTemplate.Resources.Limits`` entries for ``limits`` where none are set.

    Swarm has no swap setting: a task's swap follows the node's engine defaults.
    """
    out: dict[str, Any] = {}
    if not limits_spec.get("MemoryBytes"):
        out["MemoryBytes"] = limits.memory
    if not limits_spec.get("NanoCPUs"):
        out["NanoCPUs"] = int(limits.cpus * 1e9)
    if not limits_spec.get("Pids"):
        out["Pids"] = limits.pids
    return out


# ---- the user network -------------------------------------------------------------------

USER_NETWORK = "gpuhub-users"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
NETWORK_LABEL = "org.gpuhub.network"
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_INTERFACE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def network_name_problem(name: str) -> str | None:
    if not _NETWORK_NAME.match(name or ""):
        return (
            f"GPUHUB_USER_NETWORK={name!r} is not a usable network name. Use letters, digits, "
            "'-', '_' or '.', e.g. gpuhub-users."
        )
    if name in ("bridge", "host", "none", "default"):
        return (
            f"GPUHUB_USER_NETWORK={name!r} is one of Docker's own networks, where user servers can "
            "reach each other or the host. Leave it unset (the hub creates gpuhub-users)."
        )
    return None


def bridge_interface(name: str) -> str:
    """The Linux bridge of network ``name``: the name itself when it fits (15 characters)."""
    return name if _INTERFACE.match(name) else "gh-" + _digest(name, 12)


def network_spec(name: str) -> dict[str, Any]:
    """Arguments of ``client.networks.create`` for the user network ``name``."""
    return {
        "name": name,
        "driver": "bridge",
        "options": {ICC_OPTION: "false", BRIDGE_NAME_OPTION: bridge_interface(name)},
        "labels": {NETWORK_LABEL: "users"},
        "check_duplicate": True,
    }


def network_problem(name: str, attrs: Mapping[str, Any]) -> str | None:
    """Why an existing network ``name`` must not carry user servers, or None if it may."""
    fix = f"Remove it (docker network rm {name}) and start the hub again: the hub creates it."
    if attrs.get("Driver") != "bridge":
        return f"The Docker network '{name}' is not a bridge network. {fix}"
    if str((attrs.get("Options") or {}).get(ICC_OPTION, "true")).lower() != "false":
        return f"The Docker network '{name}' lets containers connect to each other. {fix}"
    if not network_gateway(attrs):
        return f"The Docker network '{name}' has no IPv4 gateway for the hub to listen on. {fix}"
    return None


def network_gateway(attrs: Mapping[str, Any]) -> str | None:
    """The host's IPv4 address on the network (where the hub API listens)."""
    for cfg in (attrs.get("IPAM") or {}).get("Config") or []:
        if cfg.get("Gateway") and ":" not in cfg["Gateway"]:
            return cfg["Gateway"].split("/")[0]
        subnet = cfg.get("Subnet")
        if subnet and ":" not in subnet:
            # dockerd gives the bridge the subnet's first address unless told otherwise
            return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
    return None


def network_interface(attrs: Mapping[str, Any]) -> str:
    """The Linux bridge of an existing network (named by option, else ``br-<id>``)."""
    name = (attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION)
    return name or "br-" + str(attrs.get("Id", ""))[:12]


# ---- the host firewall -------------------------------------------------------------------

COMMENT_ESTABLISHED = "gpuhub-replies"
COMMENT_HUB = "gpuhub-hub-api-"  # + the time the rule was added (seconds since the epoch)
COMMENT_DENY = "gpuhub-deny-rest"
#: a hub rule whose port nothing listens on is removed once this old (another hub's, gone)
STALE_AFTER = 600.0


def chain_name(network: str) -> str:
    """The iptables chain of ``network`` (at most 28 characters): GPUHUB-USERS for the default."""
    upper = network.upper().replace(".", "-").replace("_", "-")
    chain = upper if upper.startswith("GPUHUB-") else "GPUHUB-" + upper
    return chain if len(chain) <= 28 else "GPUHUB-" + _digest(network, 12).upper()


def jump_rule(chain: str, interface: str) -> list[str]:
    """The ``INPUT`` rule sending everything that arrives from the bridge to ``chain``."""
    return ["INPUT", "-i", interface, "-j", chain]


def established_rule() -> list[str]:
    return ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
            "-m", "comment", "--comment", COMMENT_ESTABLISHED, "-j", "ACCEPT"]  # fmt: skip


def hub_rule(address: str, port: int, now: float) -> list[str]:
    """Let containers open the hub API (``address`` empty, 0.0.0.0 or a name: any host address)."""
    where = ["-d", f"{address}/32"] if _ipv4(address) and address != "0.0.0.0" else []
    return [*where, "-p", "tcp", "-m", "tcp", "--dport", str(port),
            "-m", "comment", "--comment", f"{COMMENT_HUB}{int(now)}", "-j", "ACCEPT"]  # fmt: skip


def _ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def deny_rule() -> list[str]:
    return ["-m", "comment", "--comment", COMMENT_DENY, "-j", "REJECT"]


@dataclass(frozen=True)
class ChainRule:
    """One ``-A`` line of ``iptables -S CHAIN``, classified."""

    spec: tuple[str, ...]  # what follows ``-A CHAIN``
    kind: str  # established | hub | deny | other
    address: str = ""
    port: int = 0
    added: float = 0.0


def parse_chain(lines: Iterable[str], chain: str) -> list[ChainRule]:
    """The rules of ``chain`` from ``iptables -S CHAIN`` output, in order."""
    rules = []
    for line in lines:
        words = shlex.split(line)
        if len(words) < 2 or words[0] != "-A" or words[1] != chain:
            continue
        spec = tuple(words[2:])
        comment = _after(spec, "--comment")
        if comment == COMMENT_ESTABLISHED:
            rules.append(ChainRule(spec, "established"))
        elif comment == COMMENT_DENY:
            rules.append(ChainRule(spec, "deny"))
        elif comment.startswith(COMMENT_HUB) and comment[len(COMMENT_HUB):].isdigit():
            address = _after(spec, "-d").split("/")[0]
            port = _after(spec, "--dport")
            rules.append(ChainRule(spec, "hub", address, int(port) if port.isdigit() else 0,
                                   float(comment[len(COMMENT_HUB):])))  # fmt: skip
        else:
            rules.append(ChainRule(spec, "other"))
    return rules


def _after(spec: tuple[str, ...], flag: str) -> str:
    return spec[spec.index(flag) + 1] if flag in spec[:-1] else ""


def plan_chain(
    chain: str,
    existing: list[ChainRule],
    address: str,
    port: int,
    listening: set[int],
    now: float,
) -> list[list[str]]:
    """``iptables`` argument lists that turn ``existing`` into: replies, hub ports, deny the rest.

    Other hubs on the same network keep their rules; a rule of a hub that is gone (nothing
    listens on its port and it is older than :data:`STALE_AFTER`) is removed. This hub's rule
    is re-added with a fresh time, new before old (hub rules go first, so the deny rule stays
    after them); the chain is complete before anything jumps to it, and never lets everything
    through, even for a moment.
    """
    address = "" if address == "0.0.0.0" else address
    commands: list[list[str]] = [["-I", chain, "1", *hub_rule(address, port, now)]]
    if not any(r.kind == "established" for r in existing):
        commands.append(["-I", chain, "1", *established_rule()])
    for rule in existing:
        if rule.kind != "hub":
            continue
        ours = rule.port == port
        gone = rule.port not in listening and now - rule.added > STALE_AFTER
        if ours or gone:
            commands.append(["-D", chain, *rule.spec])
    denies = [r for r in existing if r.kind == "deny"]
    if not denies:
        commands.append(["-A", chain, *deny_rule()])
    for rule in denies[1:]:
        commands.append(["-D", chain, *rule.spec])
    return commands
