"""Named-kind GPU services fail closed: their containers carry ``NVIDIA_VISIBLE_DEVICES=void``,
so only a runtime that maps swarm's ``DOCKER_RESOURCE_<KIND>`` (``swarm-resource``) gives them a
device, and one that ignores it (toolkit 1.18.0-1.18.2 in jit-cdi mode) gives none, not all.

The first tests read ``create_service``'s arguments (no engine).  The rig test adds a node whose
dockerd runs the FAKE NVIDIA runtime (images/node: it picks devices as toolkit 1.18.2 does, from
the same config.toml, and writes its choice into the container at /etc/nvidia-fake/injected):
the config ``gpuhub node setup``'s toolkit check makes from that runtime's ``--version`` (legacy
mode) gives a hub's server exactly its unit; the same node flipped to jit-cdi (the default of an
unconfigured 1.18.2) gives the next server nothing, while a plain service with
``NVIDIA_VISIBLE_DEVICES=all`` there sees every GPU of the node - the exposure this prevents.
"""

from __future__ import annotations

import time

import docker
import pytest
from offline_spawner import offline_spawner
from swarm_rig import SwarmRig

from gpuhub_spawner.core.cluster import GPU_KIND, ClusterView, mig_kind, shared_kind
from gpuhub_spawner.core.inventory import Profile
from gpuhub_spawner.core.quotas import QuotaPolicy
from gpuhub_spawner.hub.admission import Choice
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner
from gpuhub_spawner.node.nodecli import merge_daemon_config, set_swarm_resource
from gpuhub_spawner.node.toolkit import parse_version, plan_runtime_config

SHARED_GPU = "GPU-5a5a0000-0000-4000-8000-000000000001"
#: an operator (or a CUDA image) asking for every GPU
ALL = {"extra_container_spec": {"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}}


def _env(create: dict) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in create["task_template"]["ContainerSpec"]["Env"])


@pytest.mark.parametrize("kind", [GPU_KIND, mig_kind("1g.10gb"), mig_kind("3g.40gb")], ids=["gpu", "mig", "mig-3g"])
async def test_a_named_kind_service_asks_for_no_device_itself(kind):
    spawner = offline_spawner(GPUSwarmSpawner, "ann", gpu_hub_id="fc-named", usage_db_url="", tutorials_source="",
                              cmd=["start.sh"], **ALL)
    env = _env(await spawner.service_kwargs(Choice(Profile("gpu", "GPU", pool="gpu"), QuotaPolicy()), kind))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["GPUHUB_GPU_KIND"] == kind


async def test_shared_slots_keep_their_gpu_and_cpu_servers_stay_void():
    spawner = offline_spawner(GPUSwarmSpawner, "ann", gpu_hub_id="fc-shared", usage_db_url="", tutorials_source="",
                              cmd=["start.sh"], **ALL)
    kind = shared_kind(SHARED_GPU)
    spawner._gate().view = ClusterView(shared={kind: (SHARED_GPU, "", 2, 0)})  # no node: no engine read
    shared = _env(await spawner.service_kwargs(Choice(Profile("shared", "Shared", pool="shared"), QuotaPolicy()), kind))
    assert shared["NVIDIA_VISIBLE_DEVICES"] == SHARED_GPU
    cpu = _env(await spawner.service_kwargs(Choice(Profile("cpu", "CPU only"), QuotaPolicy()), ""))
    assert cpu["NVIDIA_VISIBLE_DEVICES"] == "void"


# ---- on the rig ------------------------------------------------------------------------------

NODE = "w-failclosed"
GPUS = [f"GPU-fc00000{i}-0000-4000-8000-000000000001" for i in range(2)]
CONFIG = "/etc/nvidia-container-runtime/config.toml"
#: the packaged config.toml's shape (mode "auto": jit-cdi on 1.18)
STOCK = ('#swarm-resource = "DOCKER_RESOURCE_GPU"\n\n[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig"\n\n'
         '[nvidia-container-runtime]\nlog-level = "info"\nmode = "auto"\n')


def _container(rig: SwarmRig, service_id: str, timeout: float = 180):
    """The running container of the service's task on NODE (its engine's view)."""
    client = rig.manager_client()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            tasks = client.api.tasks(filters={"service": service_id})
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            if running:
                cid = running[0]["Status"]["ContainerStatus"]["ContainerID"]
                return rig.nodes[NODE].client().containers.get(cid)
            failed = [t["Status"].get("Err") for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
            assert not failed, failed
            time.sleep(0.5)
    finally:
        client.close()
    raise AssertionError(f"service {service_id} has no running task on {NODE} within {timeout}s")


def _seen(container) -> tuple[dict[str, str], dict[str, str]]:
    """(environment of PID 1, what the FAKE runtime/hook injected)."""
    raw = container.exec_run(["cat", "/proc/1/environ"]).output.decode()
    env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    code, out = container.exec_run(["cat", "/etc/nvidia-fake/injected"])
    assert code == 0, f"the fake NVIDIA runtime left no evidence: {out.decode()}"
    return env, dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)


def _server(rig: SwarmRig, hub, user: str):
    hub.wait_ready(user, timeout=240)
    client = rig.manager_client()
    try:
        (service,) = client.services.list(filters={"label": [f"org.gpuhub.hub={hub.hub_id}", f"org.gpuhub.user={user}"]})
        return _container(rig, service.id)
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.swarm
def test_named_kind_servers_get_their_unit_in_legacy_mode_and_nothing_in_jit_cdi(rig, swarm_hub):
    resources = [f"{GPU_KIND}={u}" for u in GPUS]
    node = rig.start_node(NODE, 8, daemon=merge_daemon_config({}, resources, {}))
    plain = None
    try:
        # what `gpuhub node setup` writes for this node's toolkit (the FAKE says it is 1.18.2)
        version = node.sh("nvidia-container-runtime --version")[1]
        assert str(parse_version(version)) == "1.18.2", version
        legacy, verdict = plan_runtime_config(set_swarm_resource(STOCK, [GPU_KIND]), version, CONFIG)
        assert verdict.action == "set-legacy" and 'mode = "legacy"' in legacy, verdict
        node.put_file(CONFIG, legacy)
        rig.join(node)
        rig.wait_nodes_ready([NODE])
        rig.load_image("gpuhub/singleuser:latest", [NODE])
        hub = swarm_hub({"gpu_profiles": [{"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"}],
                         "gpu_queue_max_wait": 0, "environment": {"NVIDIA_VISIBLE_DEVICES": "all"},
                         "extra_placement_spec": {"constraints": [f"node.hostname == {NODE}"]}})
        hub.create_users(["ann", "bob"])

        # legacy: the hook maps DOCKER_RESOURCE_NVIDIA_GPU; the server sees exactly its unit
        assert hub.spawn("ann", {"profile": "gpu"}).status_code in (201, 202)
        env, injected = _seen(_server(rig, hub, "ann"))
        unit = env[f"DOCKER_RESOURCE_{GPU_KIND}"]
        assert unit in GPUS and env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert injected == {"mode": "legacy", "devices": unit}, injected

        # the node as an unconfigured 1.18.2 would be (jit-cdi): the runtime reads its config at
        # every container create, so the next server is made under it
        node.put_file(CONFIG, legacy.replace('mode = "legacy"', 'mode = "jit-cdi"'))
        assert hub.spawn("bob", {"profile": "gpu"}).status_code in (201, 202)
        env, injected = _seen(_server(rig, hub, "bob"))
        assert env[f"DOCKER_RESOURCE_{GPU_KIND}"] in GPUS and env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert injected == {"mode": "jit-cdi", "devices": ""}, injected  # no GPU, not every GPU

        # what it would have been: a service that leaves NVIDIA_VISIBLE_DEVICES=all sees both GPUs
        hub.stop_server("ann")
        mc = rig.manager_client()
        try:
            plain = mc.services.create(
                "gpuhub/singleuser:latest", command=["sleep", "600"], name="gpuhub-failclosed-plain",
                env=["NVIDIA_VISIBLE_DEVICES=all"], constraints=[f"node.hostname == {NODE}"],
                resources=docker.types.Resources(generic_resources={GPU_KIND: 1}),
                labels={"org.gpuhub.test": "failclosed"},
            )
            env, injected = _seen(_container(rig, plain.id))
        finally:
            mc.close()
        assert env[f"DOCKER_RESOURCE_{GPU_KIND}"] in GPUS  # swarm assigned one ...
        assert injected == {"mode": "jit-cdi", "devices": ",".join(GPUS)}, injected  # ... and it sees all
    except BaseException:
        _dump(node)
        raise
    finally:
        if plain is not None:
            plain.remove()
        _drop_node(rig)


def _dump(node) -> None:
    """The node's containers' logs and the fake runtime's config, for a failed run."""
    print(node.sh(f"cat {CONFIG}; tail -20 /var/log/dockerd.log", check=False)[1])
    client = node.client()
    try:
        for c in client.containers.list(all=True):
            print(f"--- {c.name} {c.status}\n{c.logs(tail=60).decode(errors='replace')}")
    finally:
        client.close()


def _drop_node(rig: SwarmRig) -> None:
    """Remove the node's container and its entry in the swarm (its GPUs leave the hub's view)."""
    rig.remove_node(NODE)
    client = rig.manager_client()
    try:
        for n in client.nodes.list(filters={"name": NODE}):
            client.api.remove_node(n.id, force=True)
    finally:
        client.close()
