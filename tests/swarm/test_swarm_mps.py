"""Shared slots on the swarm rig: the service of a shared-slot server carries the memory-limit
environment, and the MPS client's environment, mounts and uid where its node publishes an MPS
daemon (the engine labels ``gpuhub node setup --mps`` writes); a hub set to MPS refuses a slot of a
node that publishes none.

The node ``w-mps`` advertises what setup would (its labels come from setup's own plan), and its
engine runs the daemon container setup installs, on the rig's FAKE NVIDIA runtime: no MPS binary
exists here, so that container's command fails, which is not what this test looks at; the user's
server shares the daemon's pipe and /dev/shm volumes on the node.
"""

from __future__ import annotations

import pytest
from harness import IMAGE
from swarm_rig import SwarmRig

from gpuhub_spawner.core import mps
from gpuhub_spawner.core.cluster import SHARED_LABEL_PREFIX, shared_kind
from gpuhub_spawner.core.inventory import Inventory, units_from_gpus
from gpuhub_spawner.node import mps as node_mps
from gpuhub_spawner.node.nodecli import merge_daemon_config

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

#: sorts before the rig's other shared GPU, so it is the first one the hub picks
GPU = "GPU-1b1b0000-0000-4000-8000-000000000001"
KIND = shared_kind(GPU)
MEMORY = 40960
PROFILES = [{"slug": "shared", "display_name": "Shared GPU", "pool": "shared"},
            {"slug": "cpu", "display_name": "CPU only", "pool": None}]


@pytest.fixture(scope="module")
def mps_node(rig: SwarmRig):
    inventory = Inventory(tuple(units_from_gpus([{"uuid": GPU, "memory_mb": MEMORY, "replicas": 2}])))
    plan = node_mps.plan(inventory, enable=True, image=IMAGE)
    # the daemon.json `gpuhub node setup --mps` writes: the kind, its labels, the NVIDIA runtime
    daemon = merge_daemon_config({}, [f"{KIND}=2"], {SHARED_LABEL_PREFIX + KIND: GPU, **plan.labels})
    node = rig.start_node("w-mps", 9, daemon=daemon)
    try:
        rig.join(node)
        rig.wait_nodes_ready(["w-mps"])
        rig.load_image(IMAGE, ["w-mps"])
        client = node.client()
        try:
            for spec in plan.daemons:
                node_mps.install(client, spec)
        finally:
            client.close()
        yield node, plan.daemons[0].limits
    finally:
        rig.remove_node("w-mps")


def _service_of(rig: SwarmRig, hub, user: str) -> dict:
    client = rig.manager_client()
    try:
        for service in client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"}):
            if (service.attrs["Spec"].get("Labels") or {}).get("org.gpuhub.user") == user:
                return service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    finally:
        client.close()
    raise AssertionError(f"no service of {user}")


def test_a_shared_slot_is_an_mps_client_where_its_node_runs_the_daemon_and_refused_where_not(
        rig, mps_node, swarm_hub):
    node, limits = mps_node
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0, "gpu_shared_limit": "mps"})
    hub.create_users(["ann", "bob"])

    assert hub.spawn("ann", {"profile": "shared"}).status_code in (201, 202)
    hub.wait_ready("ann", timeout=240)
    spec = _service_of(rig, hub, "ann")
    env = dict(e.split("=", 1) for e in spec["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == GPU and env["GPUHUB_GPU_SHARED"] == "1"
    assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(limits.memory_mb)  # from the node's memory label
    assert env["CUPY_GPU_MEMORY_LIMIT"] == str(limits.memory_mb * 1024**2)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == f"{limits.memory_mb / MEMORY:.3f}"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == mps.PIPE_DIR and env["GPUHUB_GPU_LIMIT"] == "mps"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={limits.memory_mb}M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    mounts = {m["Target"]: m["Source"] for m in spec.get("Mounts") or []}
    assert mounts[mps.PIPE_DIR] == mps.pipe_volume(GPU) and mounts["/dev/shm"] == mps.shm_volume(GPU)
    assert spec["User"] == "1000"
    # on the node, the server (uid 1000) writes into the daemon's /dev/shm and pipe volumes
    node.sh("docker exec -u 1000 $(docker ps -q --filter label=org.gpuhub.user=ann) "
            "sh -c 'echo hello > /dev/shm/probe && mkfifo /tmp/nvidia-mps/client-probe'")
    code, out = node.sh(f"docker run --rm -v {mps.shm_volume(GPU)}:/s -v {mps.pipe_volume(GPU)}:/p --entrypoint sh "
                        f"{IMAGE} -c 'cat /s/probe && test -p /p/client-probe && stat -c %a /s'")
    assert out.split() == ["hello", "1777"], out

    # the next slot is on the rig's other shared GPU, whose node publishes no MPS daemon: refused
    outcome = hub.watch_spawn("bob", {"profile": "shared"}, timeout=180)
    assert outcome.failure is not None and "MPS service of the GPU you were given is not running" in outcome.failure, \
        outcome


def test_a_hints_hub_wires_slots_to_a_daemon_where_one_runs_and_gives_hints_elsewhere(rig, mps_node, swarm_hub):
    node, limits = mps_node
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0})
    hub.create_users(["cyd", "dan"])
    for user in ("cyd", "dan"):  # one slot on each shared GPU (the hub spreads them)
        assert hub.spawn(user, {"profile": "shared"}).status_code in (201, 202)
        hub.wait_ready(user, timeout=240)
    env = dict(e.split("=", 1) for e in _service_of(rig, hub, "cyd")["Env"])
    # its node runs the daemon (a GPU in MPS is reached through it), so it is wired to it
    assert env["NVIDIA_VISIBLE_DEVICES"] == GPU
    assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(limits.memory_mb) and env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == mps.PIPE_DIR
    other = _service_of(rig, hub, "dan")
    env = dict(e.split("=", 1) for e in other["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] != GPU and env["GPUHUB_GPU_LIMIT"] == "hints"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450" and env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    # that node publishes no memory: no size is made up
    assert "GPUHUB_GPU_MEMORY_LIMIT_MB" not in env and not any(k.startswith("CUDA_MPS_") for k in env)
    assert mps.PIPE_DIR not in {m["Target"] for m in other.get("Mounts") or []} and not other.get("User")
