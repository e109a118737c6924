"""The swarm rig (tests/support/swarm_rig.py) for the swarm tests: built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
from harness import IMAGE, HubProcess
from needs import unavailable
from swarm_rig import NODE_IMAGE, SwarmRig, fake_migs, fake_whole_gpus

SHARED_GPU = "GPU-5a5a0000-0000-4000-8000-000000000001"

#: name -> (index, generic resources, engine labels) of the rig's GPU workers
WORKERS = {
    "w-gpu": (1, [f"NVIDIA_GPU={u}" for u in fake_whole_gpus("aa", 2)], {}),
    "w-mig": (2, [f"NVIDIA_MIG_1G_10GB={u}" for u in fake_migs("bb", 3)], {}),
    "w-shared": (3, ["NVIDIA_SHARED_5A5A00000000400080=2"],
                 {"org.gpuhub.shared.NVIDIA_SHARED_5A5A00000000400080": SHARED_GPU}),
}


@pytest.fixture(scope="session")
def rig(docker_client: docker.DockerClient) -> Iterator[SwarmRig]:
    try:
        docker_client.images.get(NODE_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"node image {NODE_IMAGE} missing: run images/build.sh node")
    rig = SwarmRig(docker_client, prefix=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-rig"))
    try:
        rig.create_network()
        manager = rig.start_node("manager", 0)
        # the hub is not on the manager: it reaches the engine over mutual TLS (README, "Swarm")
        rig.serve_mutual_tls(manager)
        rig.init_swarm(manager)
        for name, (index, resources, labels) in WORKERS.items():
            rig.join(rig.start_node(name, index, generic_resources=resources, labels=labels))
        rig.wait_nodes_ready(["manager", *WORKERS])
        # the manager only manages, as on a real cluster
        rig.update_node("manager", availability="drain")
        rig.load_image(IMAGE, list(WORKERS))
        yield rig
    finally:
        rig.teardown()


def remove_services(rig: SwarmRig, hub: HubProcess) -> None:
    client = rig.manager_client()
    try:
        for s in client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"}):
            s.remove()
    finally:
        client.close()


@pytest.fixture
def swarm_hub(hub_factory, rig: SwarmRig):
    """Start real hubs whose spawner is GPUSwarmSpawner on the rig's manager (over mutual TLS)."""
    made: list[HubProcess] = []

    def make(spawner_config: dict | None = None, extra: str = "", env: dict | None = None) -> HubProcess:
        hub = hub_factory(spawner_config, extra, start=False, spawner_class="gpu-swarm")
        hub.env.update({
            "GPUHUB_SPAWNER": "swarm",
            **rig.hub_env(),
            "GPUHUB_HUB_IP": rig.gateway,
            **(env or {}),
        })
        made.append(hub)
        hub.start()
        return hub

    yield make
    for hub in made:
        hub.stop()
        remove_services(rig, hub)
