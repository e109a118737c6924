"""``gpuhub node agent install|remove|unit``: run the node agent in the host's PID and cgroup
namespaces on this GPU node.

Why not a swarm service: since driver 535.113 NVML translates process ids into the caller's PID
namespace and drops those it cannot see, so an agent in a container's own PID namespace gets no
user's process and per-user attribution goes empty.  Swarm services cannot join the host's PID
namespace; a container started by this node's engine can (``--pid=host --cgroupns=host``), and
so can a plain host process (``unit``: a systemd unit running ``gpuhub-node-agent`` from a
``pip install 'gpuhub[node]'``).

The container (:class:`AgentContainer`, a pure spec) gets:

- ``--pid=host --cgroupns=host``: NVML's PIDs are the host's, ``/proc`` is the host's (the agent
  reads ``/proc/<pid>/cgroup`` with ``--host-proc /proc``) and cgroup paths are the host's;
- the NVIDIA runtime with ``NVIDIA_DRIVER_CAPABILITIES=utility`` (NVML only, no CUDA) and every
  GPU for monitoring; it reserves no unit;
- the Docker socket (read-only mount; the API behind it is not read-only: root on this node), as
  :mod:`.containers` lists the gpuhub servers and reads their labels through it, and
  :mod:`.agent_servers` runs the culler's kernel probe and notice in them;
- the token file read-only at ``/run/secrets/gpuhub-agent-token``, its port published on the
  node (Prometheus and the culler reach ``<node address>:9469``; users' servers can too, hence
  the token), ``--restart unless-stopped``, a read-only root file system.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.node.nodecli import SetupError

CONTAINER_NAME = "gpuhub-node-agent"
TOKEN_TARGET = "/run/secrets/gpuhub-agent-token"
DOCKER_SOCKET = "/var/run/docker.sock"
COMPONENT_LABEL = "org.gpuhub.component"


@dataclass
class AgentContainer:
    """What ``install`` starts: every field a ``docker run`` option (pure: no I/O)."""

    image: str = "gpuhub/node-agent:latest"
    token_file: str = "/etc/gpuhub/agent-token"
    node_name: str = ""
    port: int = 9469
    publish_ip: str = ""  # '' = every address of the node
    hub_id: str = ""
    runtime: str = "nvidia"  # '' = the engine's default runtime
    docker_socket: str = DOCKER_SOCKET
    job_mapping_dir: str = ""
    name: str = CONTAINER_NAME
    memory: str = "256m"
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)  # extra SRC:DST[:ro]
    labels: dict[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        argv = ["--port", str(self.port), "--host-proc", "/proc", "--token-file", TOKEN_TARGET]
        if self.hub_id:
            argv += ["--hub-id", self.hub_id]
        if self.job_mapping_dir:
            argv += ["--hpc-job-mapping-dir", self.job_mapping_dir]
        return argv

    def environment(self) -> dict[str, str]:
        env = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
        if self.node_name:
            env["GPUHUB_NODE_NAME"] = self.node_name
        return {**env, **self.env}

    def binds(self) -> list[str]:
        binds = [f"{self.token_file}:{TOKEN_TARGET}:ro", f"{self.docker_socket}:{DOCKER_SOCKET}:ro"]
        if self.job_mapping_dir:
            binds.append(f"{self.job_mapping_dir}:{self.job_mapping_dir}:rw")
        return binds + list(self.volumes)

    def all_labels(self) -> dict[str, str]:
        return {COMPONENT_LABEL: "node-agent", **self.labels}

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``docker.DockerClient.containers.run`` (detached)."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": self.command(),
            "name": self.name,
            "detach": True,
            "pid_mode": "host",
            "cgroupns": "host",
            "restart_policy": {"Name": "unless-stopped"},
            "environment": self.environment(),
            "volumes": self.binds(),
            "ports": {f"{self.port}/tcp": (self.publish_ip, self.port) if self.publish_ip else self.port},
            "labels": self.all_labels(),
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=16m"},
            "security_opt": ["no-new-privileges"],
            "mem_limit": self.memory,
        }
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return kwargs

    def docker_run(self) -> list[str]:
        """The same container as a ``docker run`` command line (``--dry-run``, the docs)."""
        argv = ["docker", "run", "-d", "--name", self.name, "--restart", "unless-stopped",
                "--pid", "host", "--cgroupns", "host"]
        if self.runtime:
            argv += ["--runtime", self.runtime]
        for key, value in self.environment().items():
            argv += ["-e", f"{key}={value}"]
        for bind in self.binds():
            argv += ["-v", bind]
        publish = f"{self.publish_ip}:{self.port}:{self.port}" if self.publish_ip else f"{self.port}:{self.port}"
        argv += ["-p", publish]
        for key, value in self.all_labels().items():
            argv += ["--label", f"{key}={value}"]
        argv += ["--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=16m",
                 "--security-opt", "no-new-privileges", "--memory", self.memory, self.image]
        return argv + self.command()


def systemd_unit(executable: str, spec: AgentContainer) -> str:
    """A unit running the agent as a host process (host namespaces by construction)."""
    argv = [executable, "--port", str(spec.port), "--host-proc", "/proc", "--token-file", spec.token_file]
    if spec.publish_ip:
        argv += ["--ip", spec.publish_ip]
    if spec.hub_id:
        argv += ["--hub-id", spec.hub_id]
    if spec.job_mapping_dir:
        argv += ["--hpc-job-mapping-dir", spec.job_mapping_dir]
    env = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in sorted({
        **({"GPUHUB_NODE_NAME": spec.node_name} if spec.node_name else {}), **spec.env}.items()))
    return (
        "# gpuhub node agent as a host process: it sees the host's PIDs and cgroups.\n"
        "# Install: gpuhub node agent unit > /etc/systemd/system/gpuhub-node-agent.service\n"
        "#          systemctl daemon-reload && systemctl enable --now gpuhub-node-agent\n"
        "[Unit]\nDescription=gpuhub node agent (per-user GPU metrics)\n"
        "After=docker.service nvidia-persistenced.service\nWants=docker.service\n\n"
        f"[Service]\n{env}ExecStart={shlex.join(argv)}\nRestart=always\nRestartSec=5\n"
        "NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n"
        + (f"ReadWritePaths={spec.job_mapping_dir}\n" if spec.job_mapping_dir else "")
        + "\n[Install]\nWantedBy=multi-user.target\n"
    )


# ---- I/O ------------------------------------------------------------------------------------


def _check_token_file(path: str) -> None:
    from gpuhub_spawner.node.agent import AgentConfigError, read_token

    try:
        read_token(path, False, "0.0.0.0")
    except AgentConfigError as e:
        raise SetupError(
            f"{e}. Make one: openssl rand -hex 32 > {path} && chmod 0600 {path} (Prometheus and the culler "
            "need the same token). Nothing was changed."
        ) from None


def _engine_checks(client, spec: AgentContainer) -> None:
    import docker

    info = client.info()
    if spec.runtime and spec.runtime not in (info.get("Runtimes") or {}):
        raise SetupError(
            f"this node's Docker has no '{spec.runtime}' runtime: run `gpuhub node setup` first (it adds the "
            "NVIDIA runtime), or pass --runtime '' to use the default one. Nothing was changed."
        )
    try:
        client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        raise SetupError(
            f"image {spec.image} is not on this node: build it (images/build.sh agent) or load it "
            "(docker save | docker load), or pass --image. Nothing was changed."
        ) from None


def wait_until_serving(container, spec: AgentContainer, timeout: float = 60.0) -> dict[str, float]:
    """The agent's own health series (``gpuhub_gpu_agent_*``), once its /metrics answers."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    with open(spec.token_file) as f:
        token = f.read().strip()
    url = f"http://{spec.publish_ip or '127.0.0.1'}:{spec.port}/metrics"
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=20).decode(errors="replace")
            raise SetupError(f"the agent container stopped ({container.status}):\n{logs}")
        try:
            r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if r.status_code == 200:
                return {
                    s.name: s.value
                    for family in text_string_to_metric_families(r.text)
                    for s in family.samples
                    if s.name.startswith("gpuhub_gpu_agent_")
                }
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SetupError(f"the agent did not answer on {url} within {timeout:.0f} s; see docker logs {spec.name}")
        time.sleep(0.5)


def install(client, spec: AgentContainer) -> dict[str, float]:
    """Start (or replace) the agent container and check that it sees the host's PIDs."""
    import docker

    _check_token_file(spec.token_file)
    _engine_checks(client, spec)
    if not spec.node_name:
        spec.node_name = client.info().get("Name", "")  # the host name swarm reports for this node
    try:
        old = client.containers.get(spec.name)
    except docker.errors.NotFound:
        old = None
    if old is not None:
        print(f"[agent] replacing the container {spec.name} ({old.short_id})")
        old.remove(force=True)
    container = client.containers.run(**spec.run_kwargs())
    print(f"[agent] started {spec.name} ({container.short_id}): {spec.image}, port {spec.port}")
    health = wait_until_serving(container, spec)
    if health.get("gpuhub_gpu_agent_host_pid_view") != 1.0:
        raise SetupError(
            f"the agent runs but does not see the host's PIDs (gpuhub_gpu_agent_host_pid_view "
            f"{health.get('gpuhub_gpu_agent_host_pid_view')}); see docker logs {spec.name}"
        )
    nvml = "NVML up" if health.get("gpuhub_gpu_agent_nvml_up") == 1.0 else "NVML NOT available (servers only)"
    print(f"[agent] serving: host PIDs visible, {nvml}")
    return health


def remove(client, name: str) -> int:
    import docker

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        print(f"[agent] no container {name}")
        return 0
    if (container.labels or {}).get(COMPONENT_LABEL) != "node-agent":
        raise SetupError(f"the container {name} is not a gpuhub node agent (no {COMPONENT_LABEL} label); left alone")
    container.remove(force=True)
    print(f"[agent] removed {name}")
    return 0


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SetupError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def spec_from_args(args: argparse.Namespace) -> AgentContainer:
    return AgentContainer(
        image=args.image, token_file=args.token_file, node_name=args.node_name, port=args.port,
        publish_ip=args.ip, hub_id=args.hub_id, runtime=args.runtime, docker_socket=args.docker_socket,
        job_mapping_dir=args.hpc_job_mapping_dir, name=args.name, env=_pairs(args.env, "--env"),
        volumes=list(args.volume or []), labels=_pairs(args.label, "--label"),
    )


def cmd_agent(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.agent_command == "unit":
        exe = shutil.which("gpuhub-node-agent") or "/usr/local/bin/gpuhub-node-agent"
        sys.stdout.write(systemd_unit(exe, spec))
        return 0
    if args.agent_command == "install" and args.dry_run:
        print(shlex.join(spec.docker_run()))
        return 0
    import docker

    client = docker.DockerClient(base_url=args.docker_url, timeout=60)
    try:
        if args.agent_command == "remove":
            return remove(client, spec.name)
        install(client, spec)
        return 0
    finally:
        client.close()


def add_setup_arguments(setup: argparse.ArgumentParser) -> None:
    """``gpuhub node setup --agent-token-file FILE``: the agent comes up with the node."""
    setup.add_argument(
        "--agent-token-file", metavar="FILE",
        help="also run the node agent in the host's PID and cgroup namespaces (as `gpuhub node agent "
             "install` does) with this token file; checked before anything changes",
    )
    setup.add_argument("--agent-image", default=AgentContainer.image, help="the node agent's image")


def setup_agent_spec(args: argparse.Namespace) -> AgentContainer | None:
    """The agent ``node setup`` will start (None: not asked); its token file is checked now,
    before setup changes anything."""
    if not getattr(args, "agent_token_file", None):
        return None
    _check_token_file(args.agent_token_file)
    return AgentContainer(image=args.agent_image, token_file=args.agent_token_file)


def setup_agent(spec: AgentContainer | None, dry_run: bool) -> None:
    """Start the agent at the end of ``node setup`` (after Docker has the NVIDIA runtime)."""
    if spec is None:
        return
    if dry_run:
        print("[setup] would start the node agent: " + shlex.join(spec.docker_run()))
        return
    import docker

    client = docker.from_env(timeout=60)
    try:
        install(client, spec)
    finally:
        client.close()


def add_agent_commands(node_sub) -> None:
    """``gpuhub node agent …`` (hooked into :func:`.nodecli.add_node_commands`)."""
    agent = node_sub.add_parser(
        "agent", help="run the node agent in the host's PID and cgroup namespaces on this node"
    ).add_subparsers(dest="agent_command", required=True)
    for name, help_text in (
        ("install", "start (or replace) the agent container: --pid=host --cgroupns=host, restart unless-stopped"),
        ("remove", "stop and remove the agent container"),
        ("unit", "print a systemd unit running the agent as a host process instead"),
    ):
        p = agent.add_parser(name, help=help_text)
        p.add_argument("--name", default=CONTAINER_NAME, help="container name")
        p.add_argument("--image", default="gpuhub/node-agent:latest")
        p.add_argument("--token-file", default="/etc/gpuhub/agent-token",
                       help="file on this node holding the agents' token (openssl rand -hex 32)")
        p.add_argument("--node-name", default="", help="the `node` label (default: the engine's host name)")
        p.add_argument("--port", type=int, default=9469)
        p.add_argument("--ip", default="", help="publish on this node address only (default: all)")
        p.add_argument("--hub-id", default="", help="only servers of this hub (org.gpuhub.hub)")
        p.add_argument("--runtime", default="nvidia", help="container runtime ('' = the engine's default)")
        p.add_argument("--docker-socket", default=DOCKER_SOCKET)
        p.add_argument("--docker-url", default="unix://" + DOCKER_SOCKET, help="this node's engine")
        p.add_argument("--hpc-job-mapping-dir", default="", help="dcgm-exporter's job-mapping directory")
        p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--volume", action="append", default=[], metavar="SRC:DST[:ro]")
        p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
        if name == "install":
            p.add_argument("--dry-run", action="store_true", help="print the docker run command, start nothing")
        p.set_defaults(func=cmd_agent)
