"""Images and tutorials reach every node, and the operator sees the swarm: on a rig of its own.

A rig (tests/support/swarm_rig.py) of a manager and two GPU workers whose engines list a real
registry (Debian's docker-registry, tests/support/registry.py, on the host and reached at the
rig network's gateway) as insecure, as ``gpuhub node setup --registry`` writes it.

- ``gpuhub node prepull --registry``: each node pulls from the registry, says so, then "already
  there"; an image the registry lacks is FAILED with the registry's reason, per node.
- Tutorials without NFS: the tutorial-sync service publishes from real Git; the mirror runs as a
  global service (the node agent's image) on both workers; running servers on the two nodes
  see a new commit; an attendee's token cannot fetch the bundle.
- ``gpuhub status``: the nodes, their GPU units (all held) and the servers' users.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests
from gitserver import WorkClone, make_bare, serve_http
from harness import IMAGE, free_port
from needs import unavailable
from registry import Registry, push_tiny_image
from swarm_rig import NODE_IMAGE, SwarmRig, fake_whole_gpus

from gpuhub_spawner.cli import main as gpuhub
from gpuhub_spawner.core.tutorial_store import current_version
from gpuhub_spawner.node.tutorial_mirror import stack_service

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

AGENT = os.environ.get("GPUHUB_AGENT_IMAGE", "gpuhub/node-agent:latest")
WORKERS = {"w-a": 1, "w-b": 2}
STORE = "/srv/gpuhub/tutorials"  # on every node: the mirror writes it, servers mount it read-only
GIT_TOKEN = "git-token-distrib-0001"
MIRROR_TOKEN = secrets.token_hex(20)
STATUS_SCOPES = ["list:users", "read:users", "read:servers", "list:services", "read:services", "read:metrics"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    server = Registry(Path(tmp_path_factory.mktemp("registry")), listen="0.0.0.0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rig(docker_client: docker.DockerClient, registry: Registry):
    for image in (NODE_IMAGE, AGENT, IMAGE):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            unavailable(f"image {image} missing: run images/build.sh")
    rig = SwarmRig(docker_client, prefix=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-rig") + "-distrib")
    try:
        rig.create_network()
        daemon = {"insecure-registries": [registry.address_on(rig.gateway)]}
        manager = rig.start_node("manager", 0, daemon=daemon)
        rig.serve_mutual_tls(manager)
        rig.init_swarm(manager)
        for name, index in WORKERS.items():
            gpu = fake_whole_gpus(f"d{index}", 1)[0]
            node = rig.start_node(name, index, daemon=daemon, generic_resources=[f"NVIDIA_GPU={gpu}"])
            node.sh(f"mkdir -p {STORE}")
            rig.join(node)
        rig.wait_nodes_ready(["manager", *WORKERS])
        rig.update_node("manager", availability="drain")  # the manager only manages
        rig.load_image(AGENT, list(WORKERS))  # `gpuhub node setup` installs the agent on GPU nodes
        rig.load_image(IMAGE, list(WORKERS))
        yield rig
    finally:
        rig.teardown()


def _prepull(rig: SwarmRig, capsys, *args: str) -> tuple[int, dict[str, str]]:
    code = gpuhub(["node", "prepull", *args, "--docker-host", rig.manager.url, "--agent-image", AGENT,
                   "--timeout", "180"])
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines() if not line.startswith("[prepull]"))
    return code, lines


def test_prepull_gets_the_image_from_the_registry_onto_every_node(rig, registry, docker_client, capsys, tmp_path):
    repository = f"gpuhub-test/course-{secrets.token_hex(3)}"
    push_tiny_image(docker_client, f"{registry.address}/{repository}:1")
    stack_registry = registry.address_on(rig.gateway)

    code, lines = _prepull(rig, capsys, f"{repository}:1", "--registry", stack_registry)
    assert code == 0 and set(lines) == set(WORKERS), lines
    assert all(line.startswith("ok (pulled, ") for line in lines.values()), lines
    for name in WORKERS:  # under the registry's name, and the name servers are started with
        client = rig.nodes[name].client()
        pulled = client.images.get(f"{stack_registry}/{repository}:1")
        assert client.images.get(f"{repository}:1").id == pulled.id
        client.close()

    code, lines = _prepull(rig, capsys, f"{repository}:1", "--registry", stack_registry)
    assert code == 0 and lines == dict.fromkeys(WORKERS, "ok (already there)"), lines

    code, lines = _prepull(rig, capsys, "gpuhub-test/never-pushed:1", "--registry", stack_registry)
    assert code == 1 and set(lines) == set(WORKERS), lines
    for line in lines.values():
        assert line.startswith("FAILED: ") and ("not found" in line or "unknown" in line), lines
    client = rig.manager_client()
    assert not client.services.list(filters={"label": "org.gpuhub.prepull"}), "prepull left its service"
    client.close()

    # --config: the images and the stack's registry (deploy.registry_port on the manager's
    # address) from gpuhub.yaml; nothing listens there on this rig, and each node says so
    config = tmp_path / "gpuhub.yaml"
    config.write_text(json.dumps({"images": {"allowed": [f"{repository}:1"]}, "deploy": {"public_url": "https://hub.example.org", "tls": {"mode": "internal"},
                                             "registry_port": registry.port, "push_images": [f"{repository}:1"]}}))
    code = gpuhub(["node", "prepull", "--config", str(config), "--docker-host", rig.manager.url,
                   "--agent-image", AGENT, "--timeout", "180"])
    said = capsys.readouterr()
    wanted = f"{rig.manager.ip}:{registry.port}/{repository}:1"
    assert code == 1 and wanted in said.err, said
    for name in WORKERS:
        assert any(line.startswith(f"{name}: {wanted}: FAILED: ") for line in said.out.splitlines()), said.out


def _deploy_mirror(rig: SwarmRig, bundle_url: str) -> None:
    """The mirror as the stack file has it (node/tutorial_mirror.stack_service), deployed with the
    manager's own `docker stack deploy`; its token a swarm secret."""
    secret = f"tutorial_mirror_token_{secrets.token_hex(3)}"
    service = stack_service(AGENT, bundle_url, STORE, "tutorial_mirror_token", secret)
    doc = {"version": "3.8", "services": {"tutorial-mirror": service}, "secrets": {secret: {"external": True}}}
    rig.manager.put_file("/tmp/mirror-stack.yml", json.dumps(doc))  # JSON is YAML
    rig.manager.sh(f"printf %s {MIRROR_TOKEN} | docker secret create {secret} -")
    rig.manager.sh("docker stack deploy -c /tmp/mirror-stack.yml distrib")


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.5)


def _server_reads(rig: SwarmRig, user: str, hub_id: str) -> tuple[str, str]:
    """(node, ~/tutorials/intro.py as the user's running server reads it)."""
    client = rig.manager_client()
    try:
        service = client.services.list(filters={"label": [f"org.gpuhub.hub={hub_id}", f"org.gpuhub.user={user}"]})[0]
        task = next(t for t in service.tasks() if t["Status"]["State"] == "running")
        node = next(n for n in client.nodes.list() if n.id == task["NodeID"]).attrs["Description"]["Hostname"]
    finally:
        client.close()
    node_client = rig.nodes[node].client()
    try:
        container = node_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        out = container.exec_run(["sh", "-c", "cat ~/tutorials/intro.py"], user="jovyan").output.decode()
    finally:
        node_client.close()
    return node, out


def _hub(hub_factory, rig: SwarmRig, tmp_path: Path, repo_url: str):
    token_file = tmp_path / "mirror-token"
    token_file.write_text(MIRROR_TOKEN)
    config = tmp_path / "gpuhub.yaml"
    config.write_text(json.dumps({"tutorials": {"mirror_token_file": str(token_file)}}))
    status_token = secrets.token_hex(16)
    extra = (f'c.JupyterHub.services.append({{"name": "ops", "api_token": {status_token!r}}})\n'
             f'c.JupyterHub.load_roles.append({{"name": "ops", "scopes": {STATUS_SCOPES!r}, "services": ["ops"]}})\n')
    hub = hub_factory({"gpu_profiles": [{"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"}],
                       "gpu_queue_max_wait": 0, "tutorials_source": STORE}, extra, start=False,
                      spawner_class="gpu-swarm")
    hub.env.update({"GPUHUB_SPAWNER": "swarm", **rig.hub_env(), "GPUHUB_HUB_IP": rig.gateway,
                    # the proxy on every address: the nodes' mirrors reach it at the gateway
                    "GPUHUB_BIND_URL": f"http://0.0.0.0:{hub.port}"})
    hub.start(env={"GPUHUB_CONFIG": str(config), "GPUHUB_TUTORIALS_REPO": repo_url,
                   "GPUHUB_TUTORIALS_STORE": str(tmp_path / "store"), "GPUHUB_TUTORIALS_TOKEN": GIT_TOKEN,
                   "GPUHUB_TUTORIALS_POLL_INTERVAL": "1", "GPUHUB_TUTORIAL_SYNC_PORT": str(free_port())})
    return hub, status_token


def test_a_published_commit_reaches_running_servers_on_two_nodes_without_nfs(rig, hub_factory, tmp_path):
    bare = make_bare(tmp_path / "repos" / "tutorials.git")
    clone = WorkClone(bare, tmp_path / "author")
    clone.write("intro.py", "print('v1')\n")
    first = clone.commit_and_push("v1")
    with serve_http(tmp_path / "repos", token=GIT_TOKEN) as base:
        hub, status_token = _hub(hub_factory, rig, tmp_path, f"{base}/tutorials.git")
        _until(lambda: current_version(tmp_path / "store") == first, 60, "the sync service publishes v1")
        _deploy_mirror(rig, f"http://{rig.gateway}:{hub.port}/services/tutorial-sync/bundle")
        try:
            for name in WORKERS:
                _until(lambda n=name: rig.nodes[n].sh(f"readlink {STORE}/current", check=False)[1].strip()
                       == f"versions/{first}", 120, f"the mirror on {name} has v1")
        except AssertionError:
            for cmd in ("docker service ps --no-trunc distrib_tutorial-mirror",
                        "docker service logs --tail 30 distrib_tutorial-mirror"):
                print(rig.manager.sh(cmd + " 2>&1", check=False)[1])
            raise

        hub.create_users(["ann", "bob"])
        for user in ("ann", "bob"):
            assert hub.spawn(user, {"profile": "gpu"}, timeout=120).status_code in (201, 202)
        for user in ("ann", "bob"):
            hub.wait_ready(user, timeout=240)
        reads = {user: _server_reads(rig, user, hub.hub_id) for user in ("ann", "bob")}
        assert {node for node, _ in reads.values()} == set(WORKERS), reads  # one server per node
        assert all(text == "print('v1')\n" for _, text in reads.values()), reads

        clone.write("intro.py", "print('v2')\n")
        clone.commit_and_push("v2")
        started = time.monotonic()
        for user in ("ann", "bob"):  # no restart: the running servers see the new commit
            _until(lambda u=user: _server_reads(rig, u, hub.hub_id)[1] == "print('v2')\n", 90,
                   f"{user}'s running server sees v2")
        print(f"v2 reached both nodes' running servers {time.monotonic() - started:.1f}s after the push")

        # an attendee's token cannot fetch the bundle; the mirror's can
        attendee = hub.api("POST", "/users/ann/tokens", json={"note": "attendee"}).json()["token"]
        bundle = hub.url + "/services/tutorial-sync/bundle"
        assert requests.get(bundle, headers={"Authorization": f"token {attendee}"}, timeout=10).status_code == 403
        assert requests.get(bundle, headers={"Authorization": f"token {MIRROR_TOKEN}"}, timeout=30).status_code == 200

        _status_sees_the_swarm(rig, hub, status_token, tmp_path)
        rig.manager.sh("docker stack rm distrib")


def _status_sees_the_swarm(rig: SwarmRig, hub, token: str, tmp_path: Path) -> None:
    token_file = tmp_path / "status-token"
    token_file.write_text(token)
    done = subprocess.run(
        [sys.executable, "-m", "gpuhub_spawner.cli", "status", "--hub-url", hub.url, "--token-file", str(token_file),
         "--docker-host", rig.manager.url, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    report = json.loads(done.stdout)
    nodes = {n["name"]: n for n in report["nodes"]}
    assert nodes["manager"]["availability"] == "drain", nodes
    for name in WORKERS:
        assert (nodes[name]["state"], nodes[name]["availability"]) == ("ready", "active"), nodes
        assert nodes[name]["pools"] == {"gpu": {"units": 1, "free": 0}}, nodes  # ann's and bob's
    assert report["pools"] == {"gpu": {"units": 2, "free": 0}}
    assert report["queue"] == [] and report["problems"] == [], report
    assert done.returncode == 0, done.stdout + done.stderr
