"""``gpuhub node …``: make a GPU machine a swarm worker, and cordon/drain/remove/prepull.

``setup`` runs on the GPU node itself (as root); the others talk to a swarm manager
(``--docker-host`` or ``DOCKER_HOST``).  Nothing here needs JupyterHub.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gpuhub_spawner.core.cluster import KIND_PREFIX, SHARED_LABEL_PREFIX, named_kinds, node_resources
from gpuhub_spawner.core.dockerhost import DockerHostError, client_kwargs
from gpuhub_spawner.core.inventory import Inventory, units_from_gpus
from gpuhub_spawner.core.labels import LABEL_HUB, ServerLabels
from gpuhub_spawner.node import mps as node_mps
from gpuhub_spawner.node.nvml import NVMLUnavailable, discover_gpus, load_nvml
from gpuhub_spawner.node.toolkit import ToolkitConfigError, plan_runtime_config, probe_version


class SetupError(Exception):
    """Setup cannot go on; nothing was changed."""


# ---- daemon.json and the NVIDIA runtime config (pure) ----------------------------------

def parse_daemon_json(text: str, path: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        line = text.splitlines()[e.lineno - 1] if 0 < e.lineno <= len(text.splitlines()) else ""
        raise SetupError(
            f"{path} line {e.lineno}, column {e.colno}: {e.msg}\n    {line.rstrip()}\n"
            "Fix that line (daemon.json is strict JSON: no comments, no trailing commas); nothing was changed."
        ) from None
    if not isinstance(config, dict):
        raise SetupError(f"{path}: the top level must be a JSON object; nothing was changed.")
    return config


def merge_daemon_config(config: dict[str, Any], resources: list[str], labels: dict[str, str],
                        runtime_path: str = "nvidia-container-runtime") -> dict[str, Any]:
    """``config`` with gpuhub's keys set; every other key (and others' entries) kept."""
    merged = dict(config)
    kept = [r for r in config.get("node-generic-resources") or [] if not str(r).startswith(KIND_PREFIX)]
    if resources or kept:
        merged["node-generic-resources"] = kept + resources
    else:
        merged.pop("node-generic-resources", None)
    runtimes = dict(config.get("runtimes") or {})
    runtimes["nvidia"] = {**(runtimes.get("nvidia") or {}), "path": runtime_path}
    runtimes["nvidia"].setdefault("runtimeArgs", [])
    merged["runtimes"] = runtimes
    merged["default-runtime"] = "nvidia"
    old_labels = [x for x in config.get("labels") or [] if not str(x).startswith(SHARED_LABEL_PREFIX)]
    new_labels = old_labels + [f"{k}={v}" for k, v in sorted(labels.items())]
    if new_labels:
        merged["labels"] = new_labels
    return merged


_SWARM_RESOURCE = re.compile(r"^\s*#?\s*swarm-resource\s*=.*$", re.M)


def set_swarm_resource(toml_text: str, kinds: list[str]) -> str:
    """The runtime config with ``swarm-resource`` naming our kinds' variables (top-level key)."""
    value = ",".join(f"DOCKER_RESOURCE_{k}" for k in kinds)
    line = f'swarm-resource = "{value}"'
    if _SWARM_RESOURCE.search(toml_text):
        return _SWARM_RESOURCE.sub(line, toml_text, count=1)
    # a top-level key must come before the first [table]
    lines = toml_text.splitlines(keepends=True)
    at = next((i for i, x in enumerate(lines) if x.lstrip().startswith("[")), len(lines))
    lines.insert(at, line + "\n")
    return "".join(lines)


def add_registry(config: dict[str, Any], registry: str) -> dict[str, Any]:
    """``config`` with the stack's registry (``host:port``, plain HTTP, read-only: `gpuhub deploy`)
    among ``insecure-registries``, so this node's engine pulls the servers' images from it (none:
    ``config`` as it is)."""
    if not registry:
        return config
    if not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", registry or ""):
        raise SetupError(f"--registry {registry[:60]!r} is not HOST:PORT: give the manager's address and "
                         "deploy.registry_port, e.g. 10.0.0.5:5000 (gpuhub deploy prints it). Nothing was changed.")
    listed = [r for r in config.get("insecure-registries") or [] if r != registry]
    return {**config, "insecure-registries": listed + [registry]}


def _diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path + " (new)"))


def _write(path: Path, text: str) -> None:
    """Atomic replace, keeping the previous file as ``<name>.gpuhub-backup``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copy2(path, path.with_name(path.name + ".gpuhub-backup"))
    tmp = path.with_name(path.name + ".gpuhub-new")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- commands ----------------------------------------------------------------------------

def _units(args: argparse.Namespace) -> tuple[Inventory, str]:
    if args.static:
        with open(args.static) as f:
            gpus = json.load(f)
        return Inventory(tuple(units_from_gpus(gpus, args.replicas))), f"static file {args.static}"
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        raise SetupError(
            f"NVML is not available on this machine ({e}). Install the NVIDIA driver and the NVIDIA "
            "container toolkit first, or pass --static FILE with the GPUs to advertise."
        ) from None
    try:
        gpus = discover_gpus(nvml)
    finally:
        nvml.nvmlShutdown()
    return Inventory(tuple(units_from_gpus(gpus, args.replicas))), "NVML"


def cmd_node_inventory(args: argparse.Namespace) -> int:
    inventory, source = _units(args)
    resources, labels = node_resources(inventory.units)
    json.dump(
        {
            "source": source,
            "pools": {name: len(units) for name, units in inventory.pools.items()},
            "node-generic-resources": resources,
            "labels": labels,
            "units": [{"id": u.id, "pool": u.pool, "device": u.device_id} for u in inventory.units],
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


def _restart_docker(command: str | None) -> None:
    if command:
        argv = shlex.split(command)
    elif shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        argv = ["systemctl", "restart", "docker"]
    else:
        argv = ["service", "docker", "restart"]
    print(f"[setup] restarting Docker: {' '.join(argv)}")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"restarting Docker failed ({' '.join(argv)}): {done.stderr.strip() or done.stdout.strip()}")


ARGV_TOKEN_REFUSED = (
    "--join-token puts the swarm's join token on the command line, where every user of this machine "
    "can read it (ps, /proc, shell history). Put it in a file only root can read and pass "
    "--join-token-file FILE, or pipe it in: ssh MANAGER docker swarm join-token worker -q | "
    "gpuhub node setup --join-token-file - --manager HOST:2377. Nothing was changed."
)


def read_join_token(path: str, stdin: TextIO | None = None) -> str:
    """The join token from ``path`` (``-``: standard input).  Never echoed in messages."""
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            with open(path) as f:
                text = f.read()
    except OSError as e:
        raise SetupError(f"cannot read --join-token-file {path}: {e.strerror}. Nothing was changed.") from None
    token = text.strip()
    if not re.fullmatch(r"SWMTKN-1-[0-9a-z]+-[0-9a-z]+", token):
        where = "standard input" if path == "-" else path
        raise SetupError(
            f"{where} does not hold a swarm join token (one line, SWMTKN-1-…: run "
            "`docker swarm join-token worker -q` on a manager). Nothing was changed."
        )
    return token


def cmd_node_setup(args: argparse.Namespace) -> int:
    from gpuhub_spawner.node import agent_install  # it imports SetupError from here

    daemon_path = Path(args.daemon_json)
    runtime_path = Path(args.runtime_config)
    # read and check everything before changing anything
    if args.join_token is not None:
        raise SetupError(ARGV_TOKEN_REFUSED)
    join_token = read_join_token(args.join_token_file) if args.join_token_file else None
    if join_token and not args.manager:
        raise SetupError("--join-token-file needs --manager HOST:2377 (a manager's swarm address). Nothing was changed.")
    old_daemon = daemon_path.read_text() if daemon_path.exists() else ""
    config = parse_daemon_json(old_daemon, str(daemon_path))
    if not args.static and not shutil.which(args.runtime):
        raise SetupError(
            f"'{args.runtime}' is not installed: this node has no NVIDIA container toolkit. Install it, "
            "or pass --static FILE to advertise a static inventory."
        )
    inventory, source = _units(args)
    if not inventory.units:
        raise SetupError(f"no GPU units found ({source}); nothing to advertise. Nothing was changed.")
    resources, labels = node_resources(inventory.units)
    try:
        mps_plan = node_mps.plan_from_args(args, inventory)  # checked before anything changes
    except node_mps.MPSSetupError as e:
        raise SetupError(str(e)) from None
    labels.update(mps_plan.labels)
    agent_spec = agent_install.setup_agent_spec(args)
    merged = add_registry(merge_daemon_config(config, resources, labels, args.runtime), args.registry)
    new_daemon = json.dumps(merged, indent=2) + "\n"
    old_runtime = runtime_path.read_text() if runtime_path.exists() else ""
    new_runtime = set_swarm_resource(old_runtime, named_kinds(resources))
    new_runtime, toolkit_note = _runtime_mode(new_runtime, named_kinds(resources), args.runtime, runtime_path)
    daemon_changed = config != merged or not daemon_path.exists()
    runtime_changed = new_runtime != old_runtime
    print(f"[setup] {len(inventory.units)} unit(s) from {source}: " +
          ", ".join(f"{len(u)} {p}" for p, u in sorted(inventory.pools.items())))
    sys.stdout.write(toolkit_note)
    if args.dry_run:
        sys.stdout.write(_diff(str(daemon_path), old_daemon, new_daemon) if daemon_changed else f"{daemon_path}: unchanged\n")
        sys.stdout.write(_diff(str(runtime_path), old_runtime, new_runtime) if runtime_changed else f"{runtime_path}: unchanged\n")
        node_mps.show(mps_plan)
        agent_install.setup_agent(agent_spec, dry_run=True)
        return 0
    if runtime_changed:
        _write(runtime_path, new_runtime)
        print(f"[setup] wrote {runtime_path}")
    if daemon_changed:
        _write(daemon_path, new_daemon)
        print(f"[setup] wrote {daemon_path}")
        _restart_docker(args.restart_command)
    else:
        print(f"[setup] {daemon_path} already up to date; Docker not restarted")
    if mps_plan.daemons or mps_plan.refused:
        node_mps.show(mps_plan)
        _apply_mps(mps_plan)
    if join_token:
        _join(args, join_token)
    agent_install.setup_agent(agent_spec, dry_run=False)
    return 0


def _runtime_mode(toml_text: str, kinds: list[str], runtime: str, path: Path) -> tuple[str, str]:
    """The runtime config with a mode that maps swarm-resource, and a note why; named kinds only
    (toolkit 1.18.0-1.18.2 in jit-cdi mode ignore swarm-resource: see node/toolkit.py)."""
    if not kinds:
        return toml_text, ""
    try:
        new_text, verdict = plan_runtime_config(toml_text, probe_version(runtime), str(path), runtime)
    except ToolkitConfigError as e:
        raise SetupError(str(e)) from None
    return new_text, f"[setup] {verdict.reason}\n"


def _apply_mps(plan: node_mps.Plan) -> None:
    try:
        node_mps.apply(plan, _local_client())
    except node_mps.MPSSetupError as e:
        raise SetupError(str(e)) from None


def _local_client():
    import docker

    return docker.DockerClient(base_url=os.environ.get("GPUHUB_NODE_DOCKER", "unix:///var/run/docker.sock"), timeout=60)


def _join(args: argparse.Namespace, token: str) -> None:
    import docker

    client = _local_client()
    deadline = time.monotonic() + 60
    while True:
        try:
            state = client.info().get("Swarm", {}).get("LocalNodeState")
            break
        except Exception as e:  # noqa: BLE001 - dockerd still starting after the restart
            if time.monotonic() > deadline:
                raise SetupError(f"Docker on this node does not answer ({e}); start it, then run setup again.") from None
            time.sleep(0.5)
    if state == "active":
        print("[setup] already part of a swarm; not joining again")
        return
    kwargs: dict[str, Any] = {"remote_addrs": [args.manager], "join_token": token}
    if args.advertise_addr:
        kwargs["advertise_addr"] = args.advertise_addr
    try:
        client.swarm.join(**kwargs)
    except docker.errors.APIError as e:
        why = str(e.explanation or e).replace(token, "<join token>")
        raise SetupError(f"joining the swarm of {args.manager} failed: {why}") from None
    print(f"[setup] joined the swarm of {args.manager}")


def _manager(args: argparse.Namespace):
    """The manager's engine: its socket, ssh, or TCP with mutual TLS only (see dockerhost)."""
    import docker

    try:
        kwargs = client_kwargs(args.docker_host or "", os.environ, "--docker-host")
    except DockerHostError as e:
        raise SetupError(str(e)) from None
    return docker.DockerClient(timeout=60, **kwargs)


def _find_node(client, name: str):
    for node in client.nodes.list():
        if name in (node.id, node.attrs["Description"].get("Hostname")) or node.id.startswith(name):
            return node
    raise SetupError(f"no swarm node named {name!r}")


def _servers_on(client, node_id: str) -> list[str]:
    """'user (service)' of every gpuhub server with a live task on the node."""
    out = []
    for service in client.services.list(filters={"label": LABEL_HUB}):
        for task in service.tasks(filters={"node": node_id, "desired-state": "running"}):
            user = ServerLabels.from_labels(service.attrs["Spec"].get("Labels")).user or "?"
            out.append(f"{user} ({service.name}, {task['Status']['State']})")
    return out


def _set_availability(node, availability: str) -> None:
    node.reload()
    spec = dict(node.attrs["Spec"])
    spec["Availability"] = availability
    node.update(spec)


def _node_and_servers(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """The manager, the node ``args.node`` names, and the gpuhub servers running on it."""
    client = _manager(args)
    node = _find_node(client, args.node)
    return client, node, _servers_on(client, node.id)


def cmd_node_cordon(args: argparse.Namespace) -> int:
    _client, node, running = _node_and_servers(args)
    _set_availability(node, "active" if args.undo else "pause")
    if args.undo:
        print(f"{args.node}: active again; new servers may be placed there")
    else:
        print(f"{args.node}: cordoned (no new servers); {len(running)} running server(s) keep running")
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    _client, node, running = _node_and_servers(args)
    if running:
        print(f"Draining {args.node} stops these servers; their users must start again (elsewhere):")
        for who in running:
            print(f"  - {who}")
    if running and not args.yes:
        print("Run again with --yes to drain.", file=sys.stderr)
        return 1
    _set_availability(node, "drain")
    print(f"{args.node}: drained")
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    client, node, running = _node_and_servers(args)
    if running and not args.yes:
        print(f"{args.node} still runs: " + "; ".join(running) + ". Drain it first, or pass --yes.", file=sys.stderr)
        return 1
    if node.attrs["Spec"].get("Availability") != "drain":
        _set_availability(node, "drain")
    node.reload()
    force = node.attrs["Status"]["State"] != "down"
    client.api.remove_node(node.id, force=force)
    print(f"{args.node}: removed from the swarm" + (" (it should run `docker swarm leave`)" if force else ""))
    return 0


def cmd_node_prepull(args: argparse.Namespace) -> int:
    """Get the server image(s) onto every node (see node/prepull.py): one line per node and image."""
    from gpuhub_spawner.node import prepull

    client = _manager(args)
    images, registry = _prepull_images(args, client)
    names = [prepull.in_registry(image, registry) for image in images]
    agent = prepull.in_registry(args.agent_image, registry) if args.agent_image_from_registry else args.agent_image
    print(f"[prepull] {', '.join(names)} onto every ready, active node (at most {args.timeout:.0f}s)",
          file=sys.stderr)
    outcomes = prepull.run(client, names, agent, args.timeout, args.pull_timeout, registry)
    for outcome in outcomes:
        print(outcome.line(with_image=len(names) > 1))
    return 0 if outcomes and all(o.ok for o in outcomes) else 1


def _prepull_images(args: argparse.Namespace, client) -> tuple[list[str], str]:
    """The images and the registry: from the command line, else the stack's (gpuhub.yaml deploy:)."""
    images, registry = list(args.image), args.registry or ""
    if args.config:
        from gpuhub_spawner.core.config import ConfigFileError, check_file

        try:
            cfg = check_file(args.config)
        except ConfigFileError as e:
            raise SetupError("; ".join(e.lines)) from None
        deploy = getattr(cfg, "deploy", None)
        images = images or list(dict.fromkeys([cfg.images.default, *(deploy.push_images if deploy else [])]))
        if deploy and not registry:
            registry = f"{_manager_address(client)}:{deploy.registry_port}"
    return images or ["gpuhub/singleuser:latest"], registry


def _manager_address(client) -> str:
    """The leader's address, as the nodes reach it (where the stack's registry is published)."""
    for node in client.nodes.list(filters={"role": "manager"}):
        status = node.attrs.get("ManagerStatus") or {}
        if status.get("Leader"):
            return status.get("Addr", "").rsplit(":", 1)[0]
    raise SetupError("no swarm leader found: run this against a manager (--docker-host)")


def add_node_commands(sub) -> None:
    node = sub.add_parser("node", help="GPU worker nodes of a swarm").add_subparsers(dest="node_command", required=True)
    inv = node.add_parser("inventory", help="this node's GPU units and what it would advertise (JSON)")
    setup = node.add_parser(
        "setup", help="advertise this node's GPUs to Docker and join the swarm",
        description="Advertise this node's GPUs to Docker and join the swarm. The NVIDIA runtime must map "
        "swarm's DOCKER_RESOURCE_* variables (swarm-resource) to devices: toolkit 1.18.0-1.18.2 do not in "
        "their default jit-cdi mode (a CUDA image would see every GPU), so setup sets mode = \"legacy\" in "
        "the runtime config where the mode is auto or jit-cdi and the toolkit is not known to be fixed "
        "(1.18.3, 1.19.0 and later are), and refuses where it is cdi or csv.",
    )
    for p in (inv, setup):
        p.add_argument("--static", help="JSON file listing the GPUs, instead of NVML")
        p.add_argument("--replicas", type=int, default=1, help="time-slicing slots per non-MIG GPU")
    inv.set_defaults(func=cmd_node_inventory)
    setup.add_argument("--daemon-json", default="/etc/docker/daemon.json")
    setup.add_argument("--runtime-config", default="/etc/nvidia-container-runtime/config.toml")
    setup.add_argument("--runtime", default="nvidia-container-runtime", help="the NVIDIA runtime executable")
    setup.add_argument("--dry-run", action="store_true", help="show the changes, change nothing")
    setup.add_argument("--restart-command", help="how to restart Docker (default: systemctl, else service)")
    setup.add_argument(
        "--join-token-file", metavar="FILE",
        help="file holding the swarm worker join token (`docker swarm join-token worker -q`); "
             "'-' reads it from standard input. Never on the command line.",
    )
    # refused with an explanation: a token on argv is readable by every user of the machine
    setup.add_argument("--join-token", help=argparse.SUPPRESS)
    setup.add_argument("--manager", help="manager address host:2377 (with --join-token-file)")
    setup.add_argument("--advertise-addr", help="this node's address for the swarm")
    setup.add_argument("--registry", metavar="HOST:PORT",
                       help="the stack's registry (gpuhub deploy): pull servers' images from it over plain HTTP")
    node_mps.add_arguments(setup)
    from gpuhub_spawner.node import agent_install  # it imports SetupError from here

    agent_install.add_setup_arguments(setup)
    setup.set_defaults(func=cmd_node_setup)
    for name, func, help_text in (
        ("cordon", cmd_node_cordon, "stop placing new servers on a node; running ones go on"),
        ("drain", cmd_node_drain, "stop the servers on a node (listing their users first)"),
        ("remove", cmd_node_remove, "remove a drained node from the swarm"),
    ):
        p = node.add_parser(name, help=help_text)
        p.add_argument("node", help="node hostname or id")
        p.add_argument("--docker-host", help="manager engine URL (default: DOCKER_HOST)")
        if name == "cordon":
            p.add_argument("--undo", action="store_true", help="make the node active again")
        else:
            p.add_argument("--yes", action="store_true", help="go ahead even if servers run there")
        p.set_defaults(func=func)
    from gpuhub_spawner.node.prepull import add_prepull_parser

    pull = add_prepull_parser(node)
    pull.set_defaults(func=cmd_node_prepull)
    agent_install.add_agent_commands(node)  # gpuhub node agent install|remove|unit
