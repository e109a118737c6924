"""The culler on a real swarm (tests/support/swarm_rig.py): servers on other nodes are warned,
culled or kept through their node's agent.

A real hub with GPUSwarmSpawner (off the manager, over mutual TLS) runs the culler that
jupyterhub_config.py registers, with no list of agent URLs: it finds the agents on the nodes
labelled gpuhub.gpu=true and each server's node from the manager's tasks.  The agents run on
two GPU workers as `gpuhub node agent install` starts them: the `docker run` of
gpuhub_spawner/node/agent_install.py's AgentContainer, less the NVIDIA runtime (the rig's
nodes have no GPU, and no NVML: the agent's GPU figures are absent, so the kernels decide).
The command itself cannot run on the rig's nodes: their Python lacks the `node` extra
(prometheus_client, tornado), which the install imports to check the token file.

An idle GPU server on w-gpu is warned (the notice file appears in its container, on its node)
and then stopped; a server on w-mig whose kernel runs a `time.sleep` loop in a closed tab is
kept as kernel-busy by every pass.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import requests
from cullerpass import pass_until, run_pass, start_busy_kernel
from needs import unavailable
from swarm_rig import SwarmRig
from test_swarm_spawner import _services, _wait

from gpuhub_spawner.node.agent_install import AgentContainer
from gpuhub_spawner.node.kernel_probe import NOTICE_PATH

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

AGENT_IMAGE = os.environ.get("GPUHUB_AGENT_IMAGE", "gpuhub/node-agent:latest")
AGENT_PORT = 9469
WORKERS = ["w-gpu", "w-mig"]
IDLE_GPU = 8  # seconds; the warning comes WARN seconds before the cull
WARN = 3
PROFILES = [
    {"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"},
    {"slug": "mig", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb"},
]
USERS = {"ida": ("gpu", "w-gpu"), "bea": ("mig", "w-mig")}  # ida idles, bea trains
CULLER_CONFIG = {"CullerApp": {"every": 0, "idle_gpu_timeout": IDLE_GPU, "idle_cpu_timeout": 600,
                               "warn_seconds": WARN, "hub_timeout": 10}}
TRAINING = "import time\nfor _ in range(3000):\n    time.sleep(0.1)\n"


def _label_gpu_nodes(rig: SwarmRig, on: bool) -> None:
    rig.update_node(list(WORKERS), labels={"gpuhub.gpu": "true" if on else None})


@pytest.fixture(scope="module")
def agents(rig: SwarmRig, docker_client: docker.DockerClient, tmp_path_factory):
    """The agent on each of WORKERS, its token in a root-only file on the node, as installed by
    `gpuhub node agent install`; the nodes labelled gpuhub.gpu=true.  Yields the token's file
    on this host (the culler's culler.gpu_agent_token_file)."""
    try:
        docker_client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {AGENT_IMAGE} missing: run images/build.sh agent")
    token = secrets.token_hex(32)
    token_file = tmp_path_factory.mktemp("culler-swarm") / "agent-token"
    token_file.write_text(token + "\n")
    rig.load_image(AGENT_IMAGE, WORKERS)
    spec = AgentContainer(image=AGENT_IMAGE, runtime="", name="gpuhub-node-agent-culler-test")
    try:
        rig.run_node_agent(list(WORKERS), spec, token)
        _label_gpu_nodes(rig, on=True)
        for name in WORKERS:
            url = f"http://{rig.nodes[name].ip}:{AGENT_PORT}/api/activity"
            _wait(lambda u=url: _answers(u, token), 60, f"the agent on {name}")
        yield token_file
    except BaseException:
        for name in WORKERS:
            print(name, rig.nodes[name].sh(f"docker logs --tail 30 {spec.name} 2>&1", check=False)[1])
        raise
    finally:
        _label_gpu_nodes(rig, on=False)
        for name in WORKERS:
            rig.nodes[name].sh(f"docker rm -f {spec.name}", check=False)


def _answers(url: str, token: str) -> bool:
    try:
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _notice(rig: SwarmRig, hub, user: str) -> str | None:
    """The notice file in ``user``'s server container, read on the node that runs it."""
    svc = _services(rig, hub)[user]
    client = rig.nodes[svc["node"]].client()
    try:
        container = client.containers.get(svc["task"]["Status"]["ContainerStatus"]["ContainerID"])
        code, out = container.exec_run(["cat", NOTICE_PATH], user="1000")
        return out.decode() if code == 0 else None
    finally:
        client.close()


def test_idle_server_on_a_worker_is_warned_then_culled_while_a_busy_kernel_elsewhere_survives(
    rig, agents, swarm_hub, tmp_path
):
    config = tmp_path / "culler.json"
    config.write_text(json.dumps(CULLER_CONFIG))
    hub = swarm_hub(
        {"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0},
        "c.JupyterHub.last_activity_interval = 2\n",
        env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(config), "GPUHUB_GPU_AGENT_TOKEN_FILE": str(agents)},
    )
    hub.culler = hub.url + "/services/gpuhub-culler/"
    hub.create_users(list(USERS))
    with ThreadPoolExecutor(len(USERS)) as pool:
        spawned = dict(zip(USERS, pool.map(lambda u: hub.spawn(u, {"profile": USERS[u][0]}, timeout=120), USERS)))
    assert all(r.status_code in (201, 202) for r in spawned.values()), {u: r.text for u, r in spawned.items()}
    for user in USERS:
        hub.wait_ready(user, timeout=180)
    services = _services(rig, hub)
    assert {u: services[u]["node"] for u in USERS} == {u: node for u, (_p, node) in USERS.items()}

    r = hub.api("POST", "/users/bea/tokens", json={"note": "culler swarm test"})
    assert r.status_code == 201, r.text
    start_busy_kernel(hub, "bea", r.json()["token"], TRAINING)  # the tab is closed: only the kernel works

    time.sleep(IDLE_GPU + 1)  # nobody uses either server through the hub
    assert pass_until(hub, "ida", "warn", timeout=30) == ("warn", "idle")
    notice = _wait(lambda: _notice(rig, hub, "ida"), 15, "the notice file in ida's container on w-gpu")
    assert "about to be stopped" in notice and "idle" in notice, notice
    kept = run_pass(hub)[("bea", "")]
    assert (kept["action"], kept["reason"]) == ("keep", "kernel-busy"), kept
    assert _notice(rig, hub, "bea") is None

    assert pass_until(hub, "ida", "cull", timeout=WARN + 30) == ("cull", "idle")
    hub.wait_stopped("ida")
    kept = run_pass(hub)[("bea", "")]
    assert (kept["action"], kept["reason"]) == ("keep", "kernel-busy"), kept
    assert hub.user("bea")["servers"] and not hub.user("ida")["servers"]
