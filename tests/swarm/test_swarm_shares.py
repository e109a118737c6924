"""Two groups compete for the rig's two whole GPUs, each with a ``gpu_share`` set as the admin
panel sets it: each gets what the rules promise (core/shares.py), on a real swarm."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

PROFILES = [
    {"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None},
]


def share_groups(rig, hub) -> dict[str, str]:
    """user -> the share group its GPU service's labels name, read from the swarm manager."""
    client = rig.manager_client()
    try:
        services = client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"})
        labels = [s.attrs["Spec"].get("Labels") or {} for s in services]
        return {lb["org.gpuhub.user"]: lb.get("org.gpuhub.share-group", "") for lb in labels if lb.get("org.gpuhub.pool")}
    finally:
        client.close()


def test_a_guarantee_a_burst_and_a_line_that_serves_who_may_go(rig, swarm_hub):
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 240})
    hub.create_users(["lab1", "lab2", "course1", "course2"])
    shares = {"lab": {"gpu": {"guaranteed": 1}}, "course": {"gpu": {"guaranteed": 1, "burst": 1}}}
    for group, share in shares.items():
        members = [f"{group}1", f"{group}2"]
        assert hub.api("POST", f"/groups/{group}", json={"users": members}).status_code == 201
        r = hub.api("PUT", f"/groups/{group}/properties", json={"gpu_share": share})
        assert r.status_code == 200, r.text

    # the lab uses its one guaranteed GPU; its second member waits: the other GPU is the course's
    assert hub.spawn("lab1", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    hub.wait_ready("lab1", timeout=240)
    assert hub.spawn("lab2", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    said = hub.wait_in_line("lab2")
    assert "kept for groups with a guaranteed share" in said[-1], said
    # the course's first member gets its guaranteed GPU at once, past lab2 in line
    assert hub.spawn("course1", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    hub.wait_ready("course1", timeout=240)
    # its second member is at the course's burst (1): it waits too, told so
    assert hub.spawn("course2", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    said = hub.wait_in_line("course2")
    assert "Your group course holds 1 whole GPU unit, the most it may hold at once" in said[-1], said
    assert share_groups(rig, hub) == {"lab1": "lab", "course1": "course"}

    # lab1 stops: its GPU goes to lab2 (the lab's guarantee again), never to course2 (at its burst)
    hub.stop_server("lab1")
    hub.wait_ready("lab2", timeout=240)
    assert hub.pending("course2")
    assert share_groups(rig, hub) == {"lab2": "lab", "course1": "course"}
    # course1 stops: course2 goes
    hub.stop_server("course1")
    hub.wait_ready("course2", timeout=240)
    assert share_groups(rig, hub) == {"lab2": "lab", "course2": "course"}
