"""Guaranteed shares on a real hub, proxy and Docker engine: the admin sets a group's
``gpu_share`` as the admin panel does (the group's properties through the hub's REST API), and
members get the units it keeps while an outsider waits, told why."""

from __future__ import annotations

import re

import pytest
from harness import fake_gpus, render_form

pytestmark = [pytest.mark.docker, pytest.mark.hub]

KEPT_TOLD = "kept for groups with a guaranteed share that have not used it yet"


def holders(docker_client, hub) -> dict[str, str]:
    """user -> the share group its running GPU server's labels name ("" for none)."""
    return {c.labels["org.gpuhub.user"]: c.labels.get("org.gpuhub.share-group", "")
            for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.unit")}


def test_a_groups_guarantee_keeps_units_for_its_members_and_an_outsider_waits_told_why(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(3, "share"), "gpu_queue_max_wait": 120})
    hub.create_users(["cam", "cleo", "otto", "olga"])
    assert hub.api("POST", "/groups/course", json={"users": ["cam", "cleo"]}).status_code == 201
    r = hub.api("PUT", "/groups/course/properties", json={"gpu_share": {"gpu": {"guaranteed": 2, "burst": 2}}})
    assert r.status_code == 200, r.text

    # the spawn form counts for each person what they could take: two for a member (the course's
    # burst), one for others (two are kept for the course)
    assert "2 of 3 free" in render_form(hub, "cam") and "1 of 3 free" in render_form(hub, "otto")
    # three GPUs, two kept for the course: one outsider gets the third, the next waits, told why
    assert hub.spawn("otto", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("otto")
    assert hub.spawn("olga", {"profile": "gpu"}, timeout=90).status_code in (201, 202)
    said = hub.wait_in_line("olga")
    assert KEPT_TOLD in said[-1] and "#1 of 1 in line" in said[-1], said
    # the members start at once, past her: the kept units are theirs
    for member in ("cam", "cleo"):
        assert hub.spawn(member, {"profile": "gpu"}).status_code in (201, 202)
        hub.wait_ready(member, timeout=120)
    assert holders(docker_client, hub) == {"otto": "", "cam": "course", "cleo": "course"}
    assert hub.pending("olga")
    # an outsider's server stops: its GPU goes to the outsider in line
    hub.stop_server("otto")
    hub.wait_ready("olga", timeout=120)
    assert holders(docker_client, hub) == {"olga": "", "cam": "course", "cleo": "course"}
    units = [c.labels["org.gpuhub.unit"] for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.unit")]
    assert len(units) == len(set(units)) == 3


def test_an_unreadable_share_stops_gpu_spawns_with_a_message_for_the_admin(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "sharebad")})
    hub.create_users(["ana"])
    assert hub.api("POST", "/groups/course", json={"users": []}).status_code == 201
    r = hub.api("PUT", "/groups/course/properties", json={"gpu_share": {"gpu": {"guarantee": 1}}})
    assert r.status_code == 200, r.text
    outcome = hub.watch_spawn("ana", {"profile": "gpu"})
    told = outcome.refusal or " ".join(outcome.messages)
    assert "A GPU share or reservation set on one of the hub's groups cannot be read" in told, outcome
    assert "Traceback" not in told
    assert not holders(docker_client, hub)
    assert "guarantee is not guaranteed or burst" in hub.log_tail(200)


def test_a_reservation_in_its_window_keeps_units_for_the_group(docker_client, hub_factory):
    from datetime import datetime, timedelta, timezone

    hub = hub_factory({"gpu_inventory": fake_gpus(2, "resv"), "gpu_queue_max_wait": 120})
    hub.create_users(["cam", "otto", "olga"])
    now = datetime.now(timezone.utc)
    window = {"pool": "gpu", "units": 1, "start": (now - timedelta(minutes=1)).isoformat(),
              "end": (now + timedelta(hours=1)).isoformat()}
    assert hub.api("POST", "/groups/course", json={"users": ["cam"]}).status_code == 201
    assert hub.api("PUT", "/groups/course/properties", json={"gpu_reservations": [window]}).status_code == 200
    # two GPUs, one reserved for the course (in its first 10 minutes: kept)
    assert hub.spawn("otto", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("otto")
    assert hub.spawn("olga", {"profile": "gpu"}, timeout=90).status_code in (201, 202)
    said = hub.wait_in_line("olga")
    assert KEPT_TOLD in said[-1], said
    # her likely wait: the kept unit is lent when the grace period ends, about 9 minutes from now
    # (no server has finished yet: no hold times, and otto's has no cull announced)
    told = hub.until_said("olga", "Likely wait:")
    assert re.search(r"Likely wait: about [89] minutes \(from the units kept for other groups' reservations "
                     r"and guaranteed shares\)", told[-1]), told
    assert hub.spawn("cam", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("cam", timeout=120)
    assert holders(docker_client, hub) == {"otto": "", "cam": "course"}
    hub.stop_server("olga")


def test_guarantees_beyond_the_pool_are_told_to_the_admin_in_the_hubs_log(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "over"), "gpu_queue_max_wait": 60})
    hub.create_users(["cam"])
    assert hub.api("POST", "/groups/course", json={"users": ["cam"]}).status_code == 201
    assert hub.api("POST", "/groups/lab", json={"users": []}).status_code == 201
    assert hub.api("PUT", "/groups/course/properties", json={"gpu_share": {"gpu": 1}}).status_code == 200
    assert hub.api("PUT", "/groups/lab/properties", json={"gpu_share": {"gpu": {"guaranteed": 1}}}).status_code == 200
    # nothing is refused: the member takes the one GPU, first come
    assert hub.spawn("cam", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("cam")
    said = [line for line in hub.log_tail(400).splitlines() if "overcommitted" in line]
    assert len(said) == 1, said
    assert "Pool gpu is overcommitted: its groups are guaranteed 2 units (course 1, lab 1) and it has 1" in said[0]
