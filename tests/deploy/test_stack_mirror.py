"""`gpuhub deploy` with ``tutorials.repo`` on the rig: every GPU node gets each published commit,
without NFS (the stack's ``tutorial-mirror``, tests/deploy/test_stack_mirror_render.py).

A manager and one GPU worker, prepared as the runbook has an operator do it (the node agent's
image loaded there, the node labelled ``gpuhub.gpu=true`` on the manager), and a real Git
repository (git http-backend, tests/support/gitserver.py) on the rig network's gateway, which the
deployed hub's sync service clones and polls every second.  One deploy for the module (sqlite,
Caddy's internal CA: the lean stack).  A pushed commit reaches the worker's store and what a
server's read-only mount of it shows; the mirror runs on the GPU node only, on the internal
network only.  About 2 minutes, most of it the deploy.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import docker
import pytest
import yaml
from gitserver import WorkClone, make_bare, serve_http
from needs import unavailable
from stack_rig import start_manager
from swarm_rig import SwarmRig
from workshop_stack import deploy, stack_logs

from gpuhub_spawner.deploy import stack

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

STACK = "gpuhub"
WORKER = "gpu-1"
VOLUME = f"{STACK}_tutorials"


@pytest.fixture(scope="module")
def rig(docker_client: docker.DockerClient) -> Iterator[SwarmRig]:
    try:
        docker_client.images.get(stack.MIRROR_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {stack.MIRROR_IMAGE} missing: run images/build.sh agent")
    rig = SwarmRig(docker_client, prefix=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-rig") + "-mirror")
    try:
        start_manager(rig, STACK)
        worker = rig.start_node(WORKER, 1)
        rig.join(worker)
        rig.wait_nodes_ready(["manager", WORKER])
        rig.load_image(stack.MIRROR_IMAGE, [WORKER])  # as for the node agent (runbook)
        worker.sh(f"docker volume rm -f {VOLUME}")  # an earlier run's store (the node's state persists)
        rig.update_node(WORKER, labels={"gpuhub.gpu": "true"})
        yield rig
    finally:
        rig.teardown()


@pytest.fixture(scope="module")
def deployed(rig: SwarmRig, tmp_path_factory: pytest.TempPathFactory):
    """The stack deployed with v1 of the tutorials published; the author's clone to push more."""
    folder = tmp_path_factory.mktemp("mirror")
    author = WorkClone(make_bare(folder / "repos" / "tutorials.git"), folder / "author")
    author.write("intro.py", "print('v1')\n")
    author.commit_and_push("v1")
    with serve_http(folder / "repos", host=rig.gateway) as base:
        config = folder / "gpuhub.yaml"
        config.write_text(yaml.safe_dump({
            "sign_in": {"admin_users": ["prof"]},
            "profiles": [{"slug": "cpu", "display_name": "CPU only", "pool": None}],
            "tutorials": {"repo": f"{base}/tutorials.git", "poll_interval": 1},
            "deploy": {"public_url": "https://hub.gpuhub.test", "tls": {"mode": "internal"}, "database": "sqlite",
                       "secrets_dir": str(folder / "secrets"), "stack_name": STACK},
        }))
        done = deploy(rig, config, timeout=420)
        if done.code != 0:
            print(stack_logs(rig))
        assert done.code == 0, done.output[-3000:]
        yield author, done.output


def _store_reads(rig: SwarmRig, path: str) -> str:
    """``path`` in the worker's store, read in its volume on the node ('' while missing)."""
    code, out = rig.nodes[WORKER].sh(
        f"cat \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {VOLUME})/{path}\" 2>/dev/null", check=False)
    return out if code == 0 else ""


def _until_store_reads(rig: SwarmRig, path: str, want: str, timeout: float) -> float:
    started = time.monotonic()
    while _store_reads(rig, path) != want:
        if time.monotonic() - started > timeout:
            for cmd in (f"docker service ps --no-trunc {STACK}_tutorial-mirror",
                        f"docker service logs --tail 30 {STACK}_tutorial-mirror",
                        f"docker service logs --tail 30 {STACK}_hub 2>&1 | grep -i tutorial"):
                print(rig.manager.sh(cmd + " 2>&1", check=False)[1])
            pytest.fail(f"{path} on {WORKER} is not {want!r} after {timeout:.0f} s: {_store_reads(rig, path)!r}")
        time.sleep(0.5)
    return time.monotonic() - started


def test_the_mirror_runs_on_the_gpu_node_only_and_never_on_the_user_network(deployed, rig):
    _, out = deployed
    assert "gpuhub.gpu=true" in out  # the next steps say how GPU nodes are found
    assert "tutorial-mirror" not in out  # not waited for: GPU nodes may join later
    client = rig.manager_client()
    try:
        tasks = client.services.get(f"{STACK}_tutorial-mirror").tasks(filters={"desired-state": "running"})
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    finally:
        client.close()
    assert sorted(nodes[t["NodeID"]] for t in tasks) == [WORKER], tasks  # not on the manager
    worker = rig.nodes[WORKER].client()
    try:
        container = worker.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_tutorial-mirror"})[0]
        assert set(container.attrs["NetworkSettings"]["Networks"]) == {f"{STACK}_internal"}
        assert [(m["Type"], m["Name"]) for m in container.attrs["Mounts"]] == [("volume", VOLUME)]
    finally:
        worker.close()


def test_a_pushed_commit_reaches_the_gpu_nodes_store_and_a_read_only_mount_of_it(deployed, rig):
    author, _ = deployed
    _until_store_reads(rig, "current/intro.py", "print('v1')\n", 120)
    author.write("intro.py", "print('v2')\n")
    sha = author.commit_and_push("v2")
    took = _until_store_reads(rig, "current/intro.py", "print('v2')\n", 90)
    print(f"v2 reached {WORKER}'s store {took:.1f} s after the push (sync polls every 1 s, the mirror every 15 s)")
    assert _store_reads(rig, f"versions/{sha}/intro.py") == "print('v2')\n"
    # what a server on the node sees: the hub's tutorials.source, the same volume, read-only
    worker = rig.nodes[WORKER].client()
    try:
        seen = worker.containers.run(
            stack.MIRROR_IMAGE, entrypoint=["sh", "-c", "cat /t/current/intro.py; touch /t/x 2>&1 || true"],
            volumes={VOLUME: {"bind": "/t", "mode": "ro"}}, remove=True, environment={"NVIDIA_VISIBLE_DEVICES": "void"},
        ).decode()
    finally:
        worker.close()
    assert seen.startswith("print('v2')\n") and "Read-only file system" in seen, seen


def test_the_hub_gives_servers_the_nodes_store(deployed, rig):
    client = rig.manager_client()
    try:
        config = next(c for c in client.configs.list() if c.name.startswith(f"{STACK}_gpuhub_yaml_"))
        hub = yaml.safe_load(base64.b64decode(client.api.inspect_config(config.id)["Spec"]["Data"]))
    finally:
        client.close()
    assert hub["tutorials"]["source"] == VOLUME  # the spawner's read-only mount
    assert hub["tutorials"]["mirror_token_file"] == "/run/secrets/tutorial_mirror_token"
