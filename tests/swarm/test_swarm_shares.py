"""Two groups compete for the rig's two whole GPUs, each with a ``gpu_share`` set as the admin
panel sets it: each gets what the rules promise (core/shares.py), on a real swarm.  And a
reservation (core/reservations.py) keeps, lends and takes back its unit there, the culler
(hub_services/culler/reclaim.py) stopping the borrower."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from cullerpass import pass_until

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


def test_a_reservation_keeps_then_lends_then_takes_back_its_unit(rig, swarm_hub, tmp_path):
    """The course reserves one of the two whole GPUs from now on.  For the grace period (the
    default, 10 min) the unit is kept: a member gets it while an outsider, the pool otherwise
    full, waits.  After the grace period an unclaimed unit is lent; when a member then waits past
    the culler's reclaim_after, the borrower is warned and stopped (busy or not) and the member
    gets the unit.  The hub reads a window's grace from its start at every decision, so the test
    moves the start back past the grace period rather than sleeping it out."""
    culler = tmp_path / "culler.json"
    culler.write_text(json.dumps({"CullerApp": {"every": 0, "warn_seconds": 3, "reclaim_after": 10,
                                                "idle_gpu_timeout": 3600, "hub_timeout": 10}}))
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 300},
                    "c.JupyterHub.last_activity_interval = 2\n",
                    env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(culler)})
    hub.culler = hub.url + "/services/gpuhub-culler/"
    hub.create_users(["out1", "out2", "cole"])
    start = datetime.now(timezone.utc)
    window = {"pool": "gpu", "units": 1, "start": start.isoformat(timespec="seconds"),
              "end": (start + timedelta(hours=1)).isoformat(timespec="seconds")}
    assert hub.api("POST", "/groups/course", json={"users": ["cole"]}).status_code == 201
    assert hub.api("PUT", "/groups/course/properties", json={"gpu_reservations": [window]}).ok

    # kept: out1 takes the unreserved GPU; out2 waits, told why; cole takes the reserved one at once
    # (a spawn that waits in line is answered 202 only after 10 s: those POSTs go in a thread)
    posts = ThreadPoolExecutor(2)
    assert hub.spawn("out1", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    hub.wait_ready("out1", timeout=240)
    out2 = posts.submit(hub.spawn, "out2", {"profile": "gpu"}, 120)
    said = hub.wait_in_line("out2")
    assert "kept for groups with a guaranteed share" in said[-1], said
    assert hub.spawn("cole", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    hub.wait_ready("cole", timeout=240)
    assert share_groups(rig, hub) == {"out1": "", "cole": "course"}
    assert out2.result().status_code == 202
    hub.stop_server("out2")  # gives up waiting
    hub.stop_server("cole")

    # lent: the window began 11 min ago, past the grace period; nobody keeps the unit; out2 takes it
    window["start"] = (datetime.now(timezone.utc) - timedelta(minutes=11)).isoformat(timespec="seconds")
    assert hub.api("PUT", "/groups/course/properties", json={"gpu_reservations": [window]}).ok
    assert hub.spawn("out2", {"profile": "gpu"}, timeout=120).status_code in (201, 202)
    hub.wait_ready("out2", timeout=240)
    # cole comes back and waits first in line (for any node: the answer to "your files are on
    # w-gpu, which has no free GPU"); past reclaim_after the most recent borrower goes
    cole = posts.submit(hub.spawn, "cole", {"profile": "gpu", "placement": "anywhere"}, 120)
    hub.wait_in_line("cole")
    assert pass_until(hub, "out2", "warn", timeout=60) == ("warn", "reclaim")
    assert pass_until(hub, "out2", "cull", timeout=60) == ("cull", "reclaim")
    hub.wait_ready("cole", timeout=240)
    assert cole.result().status_code in (201, 202)
    posts.shutdown()
    assert share_groups(rig, hub) == {"out1": "", "cole": "course"}
