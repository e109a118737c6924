"""Swarm servers get the same default limits as on one host: memory, CPUs and PIDs (real rig)."""

from __future__ import annotations

import time

import pytest
from swarm_rig import SwarmRig

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

G = 1024**3
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
    {"slug": "small", "display_name": "Small CPU", "pool": None, "mem_limit": "1G", "cpu_limit": 0.5},
]


def _service_and_container(rig: SwarmRig, hub, user: str, timeout: float = 120):
    """(service spec, the running task's container attrs on its node) of ``user``'s server."""
    deadline = time.monotonic() + timeout
    client = rig.manager_client()
    try:
        while time.monotonic() < deadline:
            for s in client.services.list(filters={"label": f"org.gpuhub.user={user}"}):
                if (s.attrs["Spec"].get("Labels") or {}).get("org.gpuhub.hub") != hub.hub_id:
                    continue
                for task in s.tasks():
                    cid = (task.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
                    if task["Status"]["State"] == "running" and cid:
                        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
                        node_client = rig.nodes[nodes[task["NodeID"]]].client()
                        try:
                            return s.attrs["Spec"], node_client.containers.get(cid).attrs
                        finally:
                            node_client.close()
            time.sleep(1)
    finally:
        client.close()
    raise AssertionError(f"{user}'s task did not run within {timeout}s:\n{hub.log_tail()}")


def test_swarm_servers_get_default_memory_cpu_and_pid_limits(rig, swarm_hub):
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0})
    hub.create_users(["sw-default", "sw-small"])
    for user, profile in (("sw-default", "cpu"), ("sw-small", "small")):
        r = hub.spawn(user, {"profile": profile}, timeout=120)
        assert r.status_code in (201, 202), r.text
    expected = {"sw-default": (8 * G, 2.0), "sw-small": (1 * G, 0.5)}
    for user, (memory, cpus) in expected.items():
        hub.wait_ready(user)
        spec, container = _service_and_container(rig, hub, user)
        limits = spec["TaskTemplate"]["Resources"]["Limits"]
        assert limits == {"MemoryBytes": memory, "NanoCPUs": int(cpus * 1e9), "Pids": 2048}, (user, limits)
        host = container["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (memory, int(cpus * 1e9), 2048), user
