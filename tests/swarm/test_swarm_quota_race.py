"""max_gpu_units on a real swarm: two named servers of one user asked for at once get one GPU
and one clear 403, whether the pool has free units or is full (the swarm gate counts services
live, let through and waiting in line, under its lock)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

PROFILES = [
    {"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None},
]


def _gpu_services(rig, hub) -> list[dict]:
    client = rig.manager_client()
    try:
        return [
            s.attrs["Spec"].get("Labels") or {}
            for s in client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"})
            if (s.attrs["Spec"].get("Labels") or {}).get("org.gpuhub.pool")
        ]
    finally:
        client.close()


@pytest.mark.parametrize("full", [False, True], ids=["free-units", "pool-full"])
def test_two_named_servers_at_once_one_gpu_one_403(rig, swarm_hub, full):
    hub = swarm_hub(
        {"gpu_profiles": PROFILES, "gpu_queue_max_wait": 90, "quota_defaults": {"max_gpu_units": 1}},
        extra="c.JupyterHub.allow_named_servers = True\n",
    )
    fillers = ["fa", "fb"] if full else []  # the rig has two whole GPUs
    hub.create_users(["xena", *fillers])
    for user in fillers:
        assert hub.spawn(user, {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    for user in fillers:
        hub.wait_ready(user, timeout=240)

    accepted, _refused, message = hub.race_two_named_gpu_servers("xena", timeout=120)
    if full:
        assert message.startswith("Your quota allows 1 GPU unit at once, and another of your servers is already "
                                  "holding or waiting in line for one."), message
        hub.stop_server("fa")
    else:
        assert message.startswith("You already hold 1 GPU unit, the most your quota allows."), message
    hub.wait_ready("xena", timeout=240, server_name=accepted)
    mine = [labels for labels in _gpu_services(rig, hub) if labels.get("org.gpuhub.user") == "xena"]
    assert [labels["org.gpuhub.server"] for labels in mine] == [accepted]
