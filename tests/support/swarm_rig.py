"""A multi-node Docker Swarm on one machine, for tests and benchmarks.

Each *node* is a container of ``gpuhub/swarm-node:trixie`` (images/node: Debian 13's dockerd
under a small supervisor) with its own ``/var/lib/docker`` in a host directory, on a bridge
network of the host's engine.  As operators are told (README, "Swarm"), no node has a plaintext
TCP Docker API: every engine listens on its unix socket, and the manager also on
``tcp://<manager ip>:2376`` with mutual TLS (``tlsverify``; certificates made by
``deploy/swarm/make-tls.sh``), which is what the hub uses (:meth:`SwarmRig.hub_env`).  The rig
drives each node through that node's own unix socket, also served into a host directory
(``Node.url``: ``unix:///var/lib/gpuhub-rig/<node>.api/docker.sock``) - a file, not a
network port, so no user's server can reach it.  Servers publish their port in host
mode on their node (there is no IPVS here, so the routing mesh does not answer), so the hub on
the host reaches them at ``<node ip>:<port>``, and they reach the hub at the network's gateway.

GPUs are FAKE: each worker advertises the generic resources of a made-up inventory (whole GPUs,
MIG instances, shared slots) and its dockerd runs the FAKE NVIDIA hook and runtime of the node
image.  Nothing else is faked: the scheduling, the task states and the networking are real.

Node directories persist between runs (``/var/lib/gpuhub-rig``) so images loaded into a node
stay; every start leaves any old swarm and removes old containers first.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound

NODE_IMAGE = os.environ.get("GPUHUB_NODE_IMAGE", "gpuhub/swarm-node:trixie")
STATE_ROOT = Path(os.environ.get("GPUHUB_RIG_STATE", "/var/lib/gpuhub-rig"))
IMAGE_CACHE = Path(os.environ.get("GPUHUB_IMAGE_CACHE", "/var/cache/gpuhub"))
ROOT = Path(__file__).resolve().parents[2]
RIG_LABEL = "org.gpuhub.rig"
MAKE_TLS = ROOT / "deploy" / "swarm" / "make-tls.sh"
#: where each node's engine also serves its unix socket (a host directory, see Node.url)
API_DIR = "/rig-api"
#: the manager's TLS files inside it (daemon.json: tlscacert, tlscert, tlskey)
NODE_TLS_DIR = "/etc/docker/tls"
TLS_PORT = 2376

# every capability but SYS_RESOURCE, which is outside this machine's bounding set (so no --privileged)
_SECURITY = ["apparmor=unconfined", "seccomp=unconfined", "systempaths=unconfined"]


def node_daemon_config(index: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """daemon.json of a rig node: inner bridges that cannot clash with the host's networks; the
    engine on unix sockets only (its own, and one in the host directory the rig talks to)."""
    config: dict[str, Any] = {
        "bip": f"10.{200 + index}.0.1/24",
        "default-address-pools": [{"base": f"10.{220 + index}.0.0/16", "size": 24}],
        "storage-driver": "overlay2",
        "hosts": ["unix:///var/run/docker.sock", f"unix://{API_DIR}/docker.sock"],
    }
    config.update(extra or {})
    return config


def mutual_tls_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the engine also on TCP port 2376, with mutual TLS (what the README tells
    operators to put in a manager's daemon.json when the hub is not on that manager)."""
    return {
        **config,
        "hosts": [*config["hosts"], f"tcp://0.0.0.0:{TLS_PORT}"],
        "tls": True,
        "tlsverify": True,
        "tlscacert": f"{NODE_TLS_DIR}/ca.pem",
        "tlscert": f"{NODE_TLS_DIR}/server-cert.pem",
        "tlskey": f"{NODE_TLS_DIR}/server-key.pem",
    }


@dataclass
class Node:
    name: str
    container: Any
    ip: str
    index: int
    api_dir: Path = STATE_ROOT

    @property
    def url(self) -> str:
        """The node's engine for the rig (and the operator commands the tests run): its unix
        socket, served into a host directory.  Never a TCP port."""
        return f"unix://{self.api_dir}/docker.sock"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def sh(self, cmd: str, check: bool = True, env: dict[str, str] | None = None) -> tuple[int, str]:
        code, out = self.container.exec_run(["sh", "-c", cmd], environment=env or {})
        text = out.decode(errors="replace")
        if check and code != 0:
            raise RuntimeError(f"{self.name}: `{cmd}` exited {code}: {text[-2000:]}")
        return code, text

    def put_file(self, path: str, content: bytes | str, mode: int = 0o644) -> None:
        data = content.encode() if isinstance(content, str) else content
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        self.container.reload()
        if self.container.status == "running":
            self.container.exec_run(["mkdir", "-p", os.path.dirname(path)])
        self.container.put_archive(os.path.dirname(path), buf.getvalue())

    def read_file(self, path: str) -> str:
        return self.sh(f"cat {path}")[1]

    def wait_engine(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.client(timeout=5).ping()
                return
            except Exception as e:  # noqa: BLE001 - still starting
                last = e
                time.sleep(0.5)
        log = self.sh("tail -30 /var/log/dockerd.log", check=False)[1]
        raise RuntimeError(f"dockerd of {self.name} did not answer ({last}):\n{log}")


@dataclass
class SwarmRig:
    """Manager + workers as dockerd containers.  ``prefix`` keeps parallel rigs apart."""

    host: docker.DockerClient
    prefix: str = "gpuhub-rig"
    nodes: dict[str, Node] = field(default_factory=dict)
    network: Any = None
    cap_all: bool = True
    tls_dir: Path | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def create_network(self) -> None:
        name = f"{self.prefix}-net"
        try:
            self.network = self.host.networks.get(name)
        except NotFound:
            self.network = self.host.networks.create(name, driver="bridge", labels={RIG_LABEL: self.prefix})

    @property
    def gateway(self) -> str:
        """The host's address on the rig network: where servers reach the hub."""
        self.network.reload()
        config = self.network.attrs["IPAM"]["Config"][0]
        if config.get("Gateway"):
            return config["Gateway"].split("/")[0]
        base = config["Subnet"].split("/")[0].rsplit(".", 1)[0]
        return f"{base}.1"

    def start_node(self, name: str, index: int, daemon: dict[str, Any] | None = None,
                   generic_resources: list[str] | None = None, labels: dict[str, str] | None = None) -> Node:
        """Start node ``name`` (a fresh dockerd; old containers and swarm state cleared)."""
        full = f"{self.prefix}-{name}"
        try:
            _remove(self.host.containers.get(full))
        except NotFound:
            pass
        state = STATE_ROOT / full
        state.mkdir(parents=True, exist_ok=True)
        api_dir = STATE_ROOT / f"{full}.api"
        shutil.rmtree(api_dir, ignore_errors=True)
        api_dir.mkdir(parents=True)
        # a node of an earlier run: keep its images, forget its swarm and containers
        subprocess.run(["rm", "-rf", str(state / "swarm"), str(state / "network")], check=False)
        extra = dict(daemon or {})
        if generic_resources:
            extra["node-generic-resources"] = generic_resources
        if labels:
            extra["labels"] = [f"{k}={v}" for k, v in sorted(labels.items())]
        # the docker CLI, not the SDK: `systempaths=unconfined` is a client-side option
        caps = [] if not self.cap_all else ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"]
        cmd = [
            "docker", "create", "--name", full, "--hostname", name, *caps,
            *[arg for opt in _SECURITY for arg in ("--security-opt", opt)],
            "--device", "/dev/net/tun", "--tmpfs", "/run",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", f"{state}:/var/lib/docker",
            "-v", f"{api_dir}:{API_DIR}",
            "--network", self.network.name, "--label", f"{RIG_LABEL}={self.prefix}",
            NODE_IMAGE,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"could not create node {full}: {out.stderr.strip()}")
        container = self.host.containers.get(out.stdout.strip())
        node = Node(name=name, container=container, ip="", index=index, api_dir=api_dir)
        node.put_file("/etc/docker/daemon.json", json.dumps(node_daemon_config(index, extra), indent=2))
        container.start()
        container.reload()
        node.ip = container.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]
        node.wait_engine()
        client = node.client()
        try:
            if client.info().get("Swarm", {}).get("LocalNodeState") != "inactive":
                client.swarm.leave(force=True)
            for c in client.containers.list(all=True):
                _remove(c)  # the node's dockerd may be removing it itself (an earlier run's --rm one)
        finally:
            client.close()
        self.nodes[name] = node
        return node

    def serve_mutual_tls(self, node: Node) -> None:
        """Open the node's engine on tcp://<ip>:2376 with mutual TLS, with certificates from
        deploy/swarm/make-tls.sh (a fresh CA per rig), and restart its dockerd."""
        self.tls_dir = STATE_ROOT / f"{self.prefix}-tls"
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        made = subprocess.run([str(MAKE_TLS), str(self.tls_dir), node.ip], capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"make-tls.sh failed: {made.stderr.strip()}")
        for name in ("ca.pem", "server-cert.pem", "server-key.pem"):
            mode = 0o600 if name.endswith("key.pem") else 0o644
            node.put_file(f"{NODE_TLS_DIR}/{name}", (self.tls_dir / "server" / name).read_bytes(), mode)
        config = json.loads(node.read_file("/etc/docker/daemon.json"))
        node.put_file("/etc/docker/daemon.json", json.dumps(mutual_tls_config(config), indent=2))
        node.sh("service docker restart")
        node.wait_engine()

    @property
    def manager_tls_url(self) -> str:
        return f"tcp://{self.manager.ip}:{TLS_PORT}"

    def hub_env(self) -> dict[str, str]:
        """How a hub off the manager reaches its engine: mutual TLS, as the README says."""
        if self.tls_dir is None:
            raise RuntimeError("the manager serves no TLS port: call serve_mutual_tls(manager) first")
        return {
            "GPUHUB_DOCKER_HOST": self.manager_tls_url,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(self.tls_dir / "client"),
        }

    def init_swarm(self, manager: Node) -> None:
        client = manager.client()
        try:
            client.swarm.init(advertise_addr=manager.ip, listen_addr=f"{manager.ip}:2377")
        finally:
            client.close()

    def join(self, node: Node, manager: Node | None = None) -> None:
        manager = manager or self.manager
        mc = manager.client()
        try:
            token = mc.swarm.attrs["JoinTokens"]["Worker"]
        finally:
            mc.close()
        client = node.client()
        try:
            client.swarm.join(remote_addrs=[f"{manager.ip}:2377"], join_token=token,
                              advertise_addr=node.ip, listen_addr=f"{node.ip}:2377")
        finally:
            client.close()

    def worker_token(self) -> str:
        mc = self.manager.client()
        try:
            return mc.swarm.attrs["JoinTokens"]["Worker"]
        finally:
            mc.close()

    @property
    def manager(self) -> Node:
        return self.nodes["manager"]

    def manager_client(self, timeout: int = 60) -> docker.DockerClient:
        return self.manager.client(timeout=timeout)

    def wait_nodes_ready(self, names: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        mc = self.manager_client()
        try:
            while True:
                ready = {n.attrs["Description"]["Hostname"] for n in mc.nodes.list()
                         if n.attrs["Status"]["State"] == "ready"}
                if set(names) <= ready:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"swarm nodes not ready: want {names}, ready {sorted(ready)}")
                time.sleep(0.5)
        finally:
            mc.close()

    def load_image(self, image: str, names: list[str]) -> None:
        """Copy ``image`` from the host's engine into nodes that lack it (docker save | load)."""
        host_image = self.host.images.get(image)
        todo = []
        for name in names:
            client = self.nodes[name].client(timeout=600)
            try:
                try:
                    if client.images.get(image).id == host_image.id:
                        continue
                except NotFound:
                    pass
                todo.append(name)
            finally:
                client.close()
        if not todo:
            return
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        tar = IMAGE_CACHE / f"{host_image.id.replace(':', '-')}.tar"
        if not tar.exists():
            tmp = tar.with_suffix(".part")
            with open(tmp, "wb") as f:
                for chunk in self.host.api.get_image(image):
                    f.write(chunk)
            tmp.rename(tar)
        for name in todo:
            client = self.nodes[name].client(timeout=900)
            try:
                with open(tar, "rb") as f:
                    client.images.load(f)
                # `docker load` of a saved id keeps the tag
                client.images.get(image)
            finally:
                client.close()

    def run_node_agent(self, names: list[str], spec: Any, token: str) -> list[str]:
        """Start the node agent on each of ``names`` with the ``docker run`` line that
        `gpuhub node agent install` runs (``spec``: its AgentContainer, without the NVIDIA
        runtime here: the rig's nodes have none), its token in a root-only file on the node.
        A container of that name from before is replaced.  Returns each agent's activity URL."""
        import shlex

        for name in names:
            node = self.nodes[name]
            node.sh("mkdir -p /etc/gpuhub")
            node.put_file(spec.token_file, token.strip() + "\n", mode=0o600)
            node.sh(f"docker rm -f {spec.name} >/dev/null 2>&1; " + shlex.join(spec.docker_run()))
        return [f"http://{self.nodes[name].ip}:{spec.port}/api/activity" for name in names]

    def update_node(self, hostnames: str | list[str], availability: str | None = None,
                    labels: dict[str, str | None] | None = None, tries: int = 10) -> None:
        """Set ``availability`` and ``labels`` (a None value removes that label) of the nodes named
        ``hostnames`` on the manager.  Swarm refuses an update from a version that changed meanwhile
        (a node's status moves on its own: "update out of sequence"); it is read again and retried."""
        names = [hostnames] if isinstance(hostnames, str) else list(hostnames)
        client = self.manager_client()
        try:
            for node in client.nodes.list():
                if node.attrs["Description"]["Hostname"] not in names:
                    continue
                for attempt in range(tries):
                    spec = dict(node.attrs["Spec"])
                    if availability:
                        spec["Availability"] = availability
                    if labels is not None:
                        merged = {**(spec.get("Labels") or {}), **labels}
                        spec["Labels"] = {k: v for k, v in merged.items() if v is not None}
                    try:
                        node.update(spec)
                        break
                    except APIError as e:
                        if "out of sequence" not in str(e) or attempt == tries - 1:
                            raise
                        time.sleep(0.2)
                        node.reload()
        finally:
            client.close()

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            try:
                node.container.remove(force=True)
            except (NotFound, APIError):
                pass

    def teardown(self) -> None:
        # the services first, so that swarm does not start again what is removed next; then each
        # node's containers, the nodes at once (a workshop day leaves dozens of them)
        manager = self.nodes.get("manager")
        if manager is not None:
            try:
                client = manager.client(timeout=10)
                for service in client.services.list():
                    service.remove()
                client.close()
            except Exception:  # noqa: BLE001 - the manager may already be dead
                pass

        def clear(name: str) -> None:
            try:
                client = self.nodes[name].client(timeout=10)
                for c in client.containers.list(all=True):
                    c.remove(force=True)
                client.close()
            except Exception:  # noqa: BLE001 - the node may already be dead
                pass
            self.remove_node(name)

        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(clear, list(self.nodes)))
        for c in self.host.containers.list(all=True, filters={"label": f"{RIG_LABEL}={self.prefix}"}):
            c.remove(force=True)
        if self.network is not None:
            try:
                self.network.remove()
            except (NotFound, APIError):
                pass
        if self.tls_dir is not None:  # a throwaway CA: its key goes with the rig
            shutil.rmtree(self.tls_dir, ignore_errors=True)


def fake_whole_gpus(tag: str, n: int) -> list[str]:
    return [f"GPU-{tag}{i:04d}-0000-4000-8000-{i:012d}" for i in range(n)]


def fake_migs(tag: str, n: int) -> list[str]:
    return [f"MIG-{tag}{i:04d}-0000-4000-8000-{i:012d}" for i in range(n)]


def _remove(container: Any, timeout: float = 60) -> None:
    """Remove ``container`` for good; one the engine is already removing is waited for."""
    try:
        container.remove(force=True)
        return
    except NotFound:
        return
    except APIError as e:
        if "already in progress" not in str(e):
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            container.reload()
        except NotFound:
            return
        time.sleep(0.5)
    raise RuntimeError(f"container {container.name} was still being removed after {timeout:.0f}s")

