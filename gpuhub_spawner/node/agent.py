"""The gpuhub node agent: GPU memory and utilization per JupyterHub user, from NVML.

Runs on every GPU node in the host's PID and cgroup namespaces (``gpuhub node agent install``
starts it so: :mod:`.agent_install`)::

    gpuhub-node-agent --port 9469 --host-proc /proc --token-file /run/secrets/gpuhub-agent-token

At start it checks that it sees the host's PIDs (:func:`.cgroup.pid_view`): since driver 535.113
NVML hides the processes of other PID namespaces, so an agent in a namespace of its own would
attribute nothing.  It says so in ``gpuhub_gpu_agent_host_pid_view`` and the log, and answers
``/api/activity`` with 503 then, and while NVML reads fail: the culler counts the node's servers
as GPU-busy rather than idle.  ``/metrics`` always answers; what NVML could not give is absent,
with ``gpuhub_gpu_agent_nvml_error{reason}``.

Every request needs ``Authorization: Bearer <token>`` (or ``token <token>``) with the token in
``--token-file``: the port is reachable from users' servers, and what it serves (who runs what,
where) is not theirs to read.  Without a token file the agent does not start, unless told
``--no-auth`` while listening on a loopback address only.

It reads every GPU and MIG instance from NVML, maps each compute process's host PID through
``/proc/<pid>/cgroup`` to its container and through the container's ``org.gpuhub.*`` labels
to the user and server, and serves:

- ``GET /metrics``       Prometheus metrics (``gpuhub_gpu_…``); per-user series only for
                         containers that are gpuhub servers
- ``GET /api/activity``  JSON for the idle culler: every gpuhub server on the node with its
                         GPU memory, process count and utilization (see
                         :func:`.attribution.activity` for the contract)
- ``POST /api/servers/<id>/probe``, ``PUT|DELETE /api/servers/<id>/notice``: the culler's
                         kernel probe and notice file in a gpuhub server on this node (a swarm
                         task the culler's engine cannot reach): :mod:`.agent_servers`

With ``--hpc-job-mapping-dir`` it also keeps dcgm-exporter's HPC job-mapping files there, so a
dcgm-exporter started with the same ``--hpc-job-mapping-dir`` labels its metrics with the user
(``hpc_job``).  NVML is read at most once per ``--cache-ttl`` however many scrapes come in;
Docker is listed at most every ``--docker-refresh`` seconds and labels are cached by id.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Float, Int, Unicode, default
from traitlets.config import Application

from gpuhub_spawner.node.agent_metrics import AgentCollector
from gpuhub_spawner.node.attribution import Attribution, activity, attribute, job_mapping, process_pids
from gpuhub_spawner.node.cgroup import FIX_PID_VIEW, PidView, ProcReader, pid_view
from gpuhub_spawner.node.containers import ContainerDirectory
from gpuhub_spawner.node.nvml import DeviceSample, NVMLUnavailable, explain, load_nvml, sample_devices

log = logging.getLogger(__name__)
_JOB_FILE = re.compile(r"^[0-9]+(\.[0-9]+)?$")


@dataclass
class Snapshot:
    time: float
    devices: list[DeviceSample] = field(default_factory=list)
    attribution: Attribution = field(default_factory=lambda: Attribution(servers={}))
    nvml_up: bool = False
    nvml_error: str = ""  # why the NVML read failed (a reason of NVML_ERROR_HELP), else ''
    duration: float = 0.0


#: pynvml's error class -> the ``reason`` label of gpuhub_gpu_agent_nvml_error (others: nvml-error,
#: or unexpected for what is not an NVML error at all)
NVML_ERROR_REASONS = {
    "NVMLLibraryMismatchError": "library-mismatch",  # not an NVMLError in pynvml
    "NVMLError_FunctionNotFound": "function-not-found",
    "NVMLError_NoPermission": "no-permission",
    "NVMLError_LibRmVersionMismatch": "driver-mismatch",
    "NVMLError_GpuIsLost": "gpu-lost",
}


def nvml_error_reason(nvml: ModuleType | None, error: BaseException) -> str:
    """The reason label for ``error``, raised by the NVML module ``nvml`` (pynvml or a fake).

    pynvml raises one subclass per error code (``NVMLError(4)`` is ``NVMLError_NoPermission``).
    """
    name = type(error).__name__
    if name in NVML_ERROR_REASONS:
        return NVML_ERROR_REASONS[name]
    base = getattr(nvml, "NVMLError", None)
    return "nvml-error" if isinstance(base, type) and isinstance(error, base) else "unexpected"


def check_pid_view(host_proc: str, private_ok: bool = False) -> PidView:
    """Whether the agent sees the host's PIDs through ``host_proc``; says what to do if not.

    ``private_ok`` (``--private-pid-namespace``): the operator says the driver is older than
    535.113 and reports host PIDs to any namespace, which ``host_proc`` then maps.
    """
    view = pid_view(host_proc)
    if view.host:
        log.info("The agent sees the host's PIDs (%s): per-user attribution is on", host_proc)
    elif private_ok:
        log.warning(
            "%s; --private-pid-namespace: trusting the driver to report host PIDs (drivers before "
            "535.113 only; on later ones per-user attribution is EMPTY: %s).", view.reason, FIX_PID_VIEW,
        )
    else:
        log.warning(
            "Per-user GPU attribution will be EMPTY: %s. To fix it, %s. "
            "gpuhub_gpu_agent_host_pid_view is 0 and /api/activity answers 503 until then.",
            view.reason, FIX_PID_VIEW,
        )
    return view


class NodeAgent:
    """One sample of NVML + /proc + Docker labels, shared by every request within ``ttl``.

    ``pid_view`` (from :func:`check_pid_view` at start) is exported as a metric; None: not checked.
    """

    def __init__(
        self,
        node: str,
        directory: ContainerDirectory,
        proc: ProcReader,
        ttl: float = 1.0,
        job_mapping_dir: str = "",
        nvml: ModuleType | None = None,
        nvml_retry: float = 30.0,
        pid_view: PidView | None = None,
        private_pid_ok: bool = False,
    ):
        self.node = node
        self.directory = directory
        self.proc = proc
        self.ttl = ttl
        self.job_mapping_dir = job_mapping_dir
        self.nvml = nvml
        self.nvml_retry = nvml_retry
        self.pid_view = pid_view
        self.private_pid_ok = private_pid_ok
        self.nvml_errors: dict[str, int] = {}  # reason -> failed reads since start
        self._failing = ""  # the reason logged for the failure going on, '' while reads work
        self._nvml_tried = 0.0
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken = 0.0

    def _nvml(self, snap: Snapshot) -> ModuleType | None:
        now = time.monotonic()
        if self.nvml is None and (not self._nvml_tried or now - self._nvml_tried >= self.nvml_retry):
            self._nvml_tried = now
            try:
                self.nvml = load_nvml()
            except NVMLUnavailable as e:
                log.warning("No NVML on node %s (%s); only servers are reported", self.node, e)
            except Exception as e:  # noqa: BLE001 - e.g. NVMLLibraryMismatchError: not an NVMLError
                self._failed(snap, None, e)
        return self.nvml

    def _failed(self, snap: Snapshot, nvml: ModuleType | None, error: BaseException) -> None:
        """Count a failed NVML read; log it once per reason, not at every scrape."""
        reason = nvml_error_reason(nvml, error)
        snap.nvml_error = reason
        self.nvml_errors[reason] = self.nvml_errors.get(reason, 0) + 1
        if reason != self._failing:
            self._failing = reason
            log.warning(
                "NVML read failed on node %s: %s. Its series are absent until it works; "
                "gpuhub_gpu_agent_nvml_error{reason=\"%s\"} is 1 meanwhile.",
                self.node, explain(error), reason,
            )

    def snapshot(self) -> Snapshot:
        """The current sample, taken again when older than ``ttl`` (one sampler at a time)."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._taken >= self.ttl:
                self._snapshot = self._sample()
                self._taken = time.monotonic()
            return self._snapshot

    def _read_nvml(self, snap: Snapshot) -> None:
        nvml = self._nvml(snap)
        if nvml is None:
            return
        try:
            snap.devices = sample_devices(nvml)
        except Exception as e:  # noqa: BLE001 - never a 500: the series are absent, the reason exported
            self._failed(snap, nvml, e)
            return
        snap.nvml_up = True
        if self._failing:
            log.info("NVML reads work again on node %s", self.node)
            self._failing = ""

    def _sample(self) -> Snapshot:
        t0 = time.perf_counter()
        snap = Snapshot(time=time.time())
        self._read_nvml(snap)
        servers = self.directory.servers()
        containers: dict[int, str | None] = {}
        for pid in process_pids(snap.devices):
            cid = self.proc.container_of(pid)
            containers[pid] = cid
            if cid is not None and cid not in servers:
                server = self.directory.server_of(cid)  # started since the last listing
                if server is not None:
                    servers[cid] = server
        snap.attribution = attribute(snap.devices, containers, servers)
        if self.job_mapping_dir and snap.nvml_up:
            write_job_mapping(Path(self.job_mapping_dir), job_mapping(snap.devices, servers.values()))
        snap.duration = time.perf_counter() - t0
        return snap

    def activity(self) -> dict[str, Any]:
        snap = self.snapshot()
        return activity(self.node, snap.time, snap.devices, snap.attribution)

    def unattributable(self) -> str:
        """Why the per-server GPU figures cannot be trusted now ('' when they can): zeros from an
        agent that cannot see would make the culler stop a training server as GPU-idle."""
        snap = self.snapshot()
        if snap.nvml_error:
            return f"the last NVML read failed ({snap.nvml_error}; see gpuhub_gpu_agent_nvml_error)"
        view = self.pid_view
        if snap.nvml_up and view is not None and not view.host and not self.private_pid_ok:
            return f"the agent does not see the host's PIDs: {view.reason}; {FIX_PID_VIEW}"
        return ""


def write_job_mapping(directory: Path, files: dict[str, list[str]]) -> None:
    """Write each mapping file atomically; remove ours that no longer hold a job."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, jobs in files.items():
        path = directory / name
        if not jobs:
            path.unlink(missing_ok=True)
            continue
        content = "".join(f"{job}\n" for job in jobs)
        try:
            if path.read_text() == content:
                continue
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpuhub-")
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    for path in directory.iterdir():
        if _JOB_FILE.match(path.name) and path.name not in files:
            path.unlink(missing_ok=True)  # a GPU that is gone


# ---- web ---------------------------------------------------------------------------------


def token_matches(header: str, token: str) -> bool:
    """Is ``header`` (an Authorization value) ``Bearer <token>`` or ``token <token>``?"""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class _Handler(web.RequestHandler):
    @property
    def agent(self) -> NodeAgent:
        return self.settings["agent"]

    def prepare(self) -> None:
        token = self.settings["token"]
        if token is None:  # --no-auth on a loopback address
            return
        if not token_matches(self.request.headers.get("Authorization", ""), token):
            self.set_header("WWW-Authenticate", 'Bearer realm="gpuhub-node-agent"')
            self.set_header("Content-Type", "text/plain")
            self.set_status(401)
            self.finish("401: this agent needs 'Authorization: Bearer <token>' (its --token-file)\n")


class MetricsHandler(_Handler):
    async def get(self) -> None:
        body = await asyncio.get_running_loop().run_in_executor(
            None, generate_latest, self.settings["registry"]
        )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(body)


class ActivityHandler(_Handler):
    """The culler's GPU signal: 503 while the agent cannot attribute (the culler then counts the
    node's servers as GPU-busy: never idle because the agent is blind)."""

    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        why = await loop.run_in_executor(None, self.agent.unattributable)
        self.set_header("Content-Type", "application/json")
        if why:
            self.set_status(503)
            self.write(json.dumps({"node": self.agent.node, "error": why}))
            return
        self.write(json.dumps(await loop.run_in_executor(None, self.agent.activity)))


class IndexHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(f"gpuhub node agent on {self.agent.node}: /metrics, /api/activity, /api/servers/<id>/probe|notice\n")


def make_web_app(agent: NodeAgent, token: str | None = None, servers: Any = None) -> web.Application:
    """The agent's routes; every request must carry ``token``.  ``None`` checks nothing: the
    application allows that only on a loopback address (:func:`read_token`).

    ``servers``: the :class:`.agent_servers.ServerExec` behind ``/api/servers/…`` (the culler's
    kernel probe and notice on this node); default: one on the agent's own engine and hub id.
    """
    from gpuhub_spawner.node import agent_servers  # it builds on this module's _Handler

    if servers is None:
        servers = agent_servers.ServerExec(agent.directory.api, agent.directory.hub_id)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return web.Application(
        [(r"/", IndexHandler), (r"/metrics", MetricsHandler), (r"/api/activity", ActivityHandler),
         *agent_servers.routes()],
        agent=agent,
        registry=registry,
        token=token,
        servers=servers,
    )


class AgentConfigError(Exception):
    """The agent cannot start as configured (the message says how to fix it)."""


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def read_token(path: str, no_auth: bool, ip: str) -> str | None:
    """The token to require, from ``path``; ``None`` only with ``no_auth`` on a loopback ``ip``."""
    if no_auth:
        if not is_loopback(ip):
            raise AgentConfigError(
                f"--no-auth is only allowed with a loopback --ip (127.0.0.1), not {ip!r}: on any other "
                "address users' servers could read the agent. Give --token-file instead."
            )
        if path:
            raise AgentConfigError("give either --token-file or --no-auth, not both")
        return None
    if not path:
        raise AgentConfigError(
            "no --token-file: the agent needs a token that Prometheus and the culler send "
            "(a swarm secret, e.g. /run/secrets/gpuhub-agent-token; see deploy/swarm/README.md). "
            "For a loopback-only agent, --ip 127.0.0.1 --no-auth."
        )
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise AgentConfigError(f"cannot read --token-file {path}: {e.strerror}") from None
    if len(token) < 16:
        raise AgentConfigError(f"--token-file {path} holds no token of at least 16 characters (openssl rand -hex 32)")
    return token


class NodeAgentApp(Application):
    """gpuhub node agent: per-user GPU metrics and activity for one GPU node."""

    name = "gpuhub-node-agent"
    description = __doc__

    ip = Unicode("0.0.0.0", config=True, help="Address to listen on.")
    port = Int(9469, config=True, help="Port to listen on.")
    node = Unicode(config=True, help="Node name in the metrics (default: the host name).")
    host_proc = Unicode(
        "/proc",
        config=True,
        help="""The host's /proc (NVML reports host PIDs). In a container run with the host's PID
        namespace (`gpuhub node agent install`: --pid=host), /proc is the host's.""",
    )
    cache_ttl = Float(1.0, config=True, help="Seconds one NVML sample serves scrapes and activity requests.")
    docker_refresh = Float(5.0, config=True, help="Seconds between listings of the gpuhub containers.")
    hub_id = Unicode("", config=True, help="Only servers of this hub (label org.gpuhub.hub); empty: all.")
    token_file = Unicode(
        "",
        config=True,
        help="""File holding the token every request must send (``Authorization: Bearer <token>``),
        e.g. the swarm secret /run/secrets/gpuhub-agent-token. Required unless --no-auth.
        Prometheus: ``authorization: {credentials_file: …}``; the culler:
        GPUHUB_GPU_AGENT_TOKEN_FILE.""",
    )
    no_auth = Bool(
        False,
        config=True,
        help="""Serve without a token. Only allowed when --ip is a loopback address (nothing but
        this machine's own processes can connect); the agent refuses to start otherwise.""",
    )
    private_pid_namespace = Bool(
        False,
        config=True,
        help="""The agent runs in a PID namespace of its own on purpose (the old swarm service of
        deploy/swarm/node-agent.yml) and the driver is older than 535.113, so NVML still reports
        host PIDs, mapped through --host-proc. Without it, such an agent answers /api/activity
        with 503 (the culler then counts its servers as GPU-busy), as NVML on later drivers hides
        every other container's process from it. gpuhub_gpu_agent_host_pid_view stays 0.""",
    )
    docker_url = Unicode(
        "", config=True, help="Docker engine URL (default: DOCKER_HOST or the local socket)."
    )
    probe_timeout = Float(
        15.0,
        config=True,
        help="""Seconds a kernel probe or notice write for the culler may take in a server's
        container (POST /api/servers/<id>/probe); later, the agent answers 504 and the culler
        keeps the server as possibly active.""",
    )
    hpc_job_mapping_dir = Unicode(
        "",
        config=True,
        help="""Optional: keep dcgm-exporter's HPC job-mapping files in this directory (one file
        per GPU index, or <GPU index>.<GPU instance id> for MIG, listing the users that hold
        it). Start dcgm-exporter with the same --hpc-job-mapping-dir. Empty: off.""",
    )

    aliases = {
        "ip": "NodeAgentApp.ip",
        "port": "NodeAgentApp.port",
        "node": "NodeAgentApp.node",
        "host-proc": "NodeAgentApp.host_proc",
        "cache-ttl": "NodeAgentApp.cache_ttl",
        "docker-refresh": "NodeAgentApp.docker_refresh",
        "hub-id": "NodeAgentApp.hub_id",
        "docker-url": "NodeAgentApp.docker_url",
        "hpc-job-mapping-dir": "NodeAgentApp.hpc_job_mapping_dir",
        "token-file": "NodeAgentApp.token_file",
        "probe-timeout": "NodeAgentApp.probe_timeout",
    }
    flags = {
        "no-auth": ({"NodeAgentApp": {"no_auth": True}}, "serve without a token (loopback --ip only)"),
        "private-pid-namespace": (
            {"NodeAgentApp": {"private_pid_namespace": True}},
            "serve /api/activity from a PID namespace of its own (drivers before 535.113 only)",
        ),
    }

    @default("node")
    def _default_node(self) -> str:
        return os.environ.get("GPUHUB_NODE_NAME") or socket.gethostname()

    def make_agent(self) -> NodeAgent:
        import docker

        client = (
            docker.DockerClient(base_url=self.docker_url, timeout=10)
            if self.docker_url
            else docker.from_env(timeout=10)
        )
        directory = ContainerDirectory(client.api, refresh=self.docker_refresh, hub_id=self.hub_id)
        return NodeAgent(
            self.node,
            directory,
            ProcReader(self.host_proc),
            ttl=self.cache_ttl,
            job_mapping_dir=self.hpc_job_mapping_dir,
            pid_view=check_pid_view(self.host_proc, self.private_pid_namespace),
            private_pid_ok=self.private_pid_namespace,
        )

    async def serve(self, token: str | None) -> None:
        from gpuhub_spawner.node.agent_servers import MAX_NOTICE, ServerExec

        agent = self.make_agent()
        servers = ServerExec(agent.directory.api, self.hub_id, timeout=self.probe_timeout)
        server = HTTPServer(make_web_app(agent, token, servers), max_body_size=2 * MAX_NOTICE)
        server.listen(self.port, self.ip)
        log.info(
            "gpuhub node agent for %s on %s:%d (host proc %s; %s)", self.node, self.ip, self.port, self.host_proc,
            "no token: loopback only" if token is None else f"token from {self.token_file}",
        )
        # the container's PID 1: the kernel ignores a signal it does not handle, so without this
        # `docker stop` (an update of the service, a drain) waited out the grace period and killed it
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (embedded): no signals here
                pass
        await stop.wait()
        server.stop()
        log.info("gpuhub node agent for %s stopped (signal)", self.node)

    def start(self) -> None:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
        try:
            token = read_token(self.token_file, self.no_auth, self.ip)
        except AgentConfigError as e:
            print(f"gpuhub-node-agent: {e}", file=sys.stderr)
            self.exit(2)
        from docker.errors import DockerException

        try:
            asyncio.run(self.serve(token))
        except DockerException as e:
            print(f"gpuhub-node-agent: cannot reach this node's Docker engine ({e}): mount its socket "
                  "(/var/run/docker.sock) into the agent, or give --docker-url", file=sys.stderr)
            self.exit(2)


def main(argv: list[str] | None = None) -> None:
    app = NodeAgentApp()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main()
