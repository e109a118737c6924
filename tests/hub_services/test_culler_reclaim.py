"""Units taken back for a group's guarantee or reservation: real hub, proxy, culler, containers.

One FAKE GPU (no GPU here); the hub's line says what it wants back (``GET /hub/api/gpuhub/lines``,
gpuhub_spawner/hub/lines.py) and the culler acts on it (hub_services/culler/reclaim.py):

- an outsider's idle server is reclaimed, sooner than the usual GPU idle timeout, once a member
  within the lab's guaranteed share waits for the pool (and not before);
- a busy borrower of a reservation's lent unit is warned and stopped once the course's member
  has waited past ``reclaim_after``; the unit goes to the member.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from cullerpass import decision, pass_until, spawn, start_busy_kernel
from harness import HubProcess, fake_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]

PROFILES = [
    {"slug": "gpu", "display_name": "GPU", "pool": "gpu"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
]
RECLAIM_IDLE = 8  # idle seconds of an over-share server while the line wants its unit
RECLAIM_AFTER = 25  # seconds a reservation's member waits before a borrower is taken back
# (more than the 10 s a spawn's POST takes to answer 202 while it waits in line)
CULLER_CONFIG = {"CullerApp": {
    "every": 0, "idle_gpu_timeout": 3600, "idle_cpu_timeout": 3600, "warn_seconds": 3,
    "reclaim_idle_timeout": RECLAIM_IDLE, "reclaim_after": RECLAIM_AFTER,
}}


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reclaim-hub")
    config = workdir / "culler.json"
    config.write_text(json.dumps(CULLER_CONFIG))
    hub = HubProcess(
        workdir,
        {"gpu_inventory": fake_gpus(1, "rc"), "gpu_profiles": PROFILES, "gpu_queue_max_wait": 600,
         "gpu_reservation_grace": 0},  # reserved units are lent at once: a member must take them back
        "c.JupyterHub.last_activity_interval = 2\n",
    )
    hub.culler = hub.url + "/services/gpuhub-culler/"
    with hub.kept_for_tests(docker_client, log_lines=200):
        hub.start(env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(config)})
        yield hub


def _group(hub, name: str, members: list[str], **props) -> None:
    assert hub.api("POST", f"/groups/{name}", json={"users": members}).status_code == 201
    r = hub.api("PUT", f"/groups/{name}/properties", json=props)
    assert r.status_code == 200, r.text


def test_an_idle_outsider_gives_its_unit_back_to_a_member_within_the_lab_guarantee(hub, docker_client):
    hub.create_users(["ola", "lea"])
    spawn(hub, "ola", "gpu")  # before the lab had a share: ola holds the only GPU
    _group(hub, "lab", ["lea"], gpu_share={"gpu": {"guaranteed": 1}})
    # idle past the over-share timeout, but nobody entitled waits: the usual (long) timeout rules
    time.sleep(RECLAIM_IDLE + 1)
    assert decision(hub, "ola")[0] == "keep"
    # lea, within the lab's guarantee, waits for the pool: ola's idle server is reclaimed for her
    assert hub.spawn("lea", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_in_line("lea")
    assert pass_until(hub, "ola", "warn", timeout=60) == ("warn", "over-share")
    assert pass_until(hub, "ola", "cull", timeout=60) == ("cull", "over-share")
    hub.wait_ready("lea", timeout=180)
    hub.stop_server("lea")
    assert hub.api("DELETE", "/groups/lab").status_code == 204  # its guarantee would keep the unit

def test_a_busy_borrower_of_a_reserved_unit_is_stopped_once_the_member_waited_past_the_bound(hub, docker_client):
    hub.create_users(["bo", "cole"])
    now = datetime.now(timezone.utc)
    window = {"pool": "gpu", "units": 1, "start": (now - timedelta(hours=1)).isoformat(timespec="minutes"),
              "end": (now + timedelta(hours=2)).isoformat(timespec="minutes")}
    _group(hub, "course", ["cole"], gpu_reservations=[window])
    spawn(hub, "bo", "gpu")  # lent: past the (zero) grace, an outsider may take the reserved unit
    token = hub.api("POST", "/users/bo/tokens", json={"note": "reclaim test"}).json()["token"]
    start_busy_kernel(hub, "bo", token, "import time\nwhile True: time.sleep(1)")
    assert hub.spawn("cole", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_in_line("cole")
    # busy: an over-share idle timeout never stops it; before the bound it is kept
    assert decision(hub, "bo") == ("keep", "kernel-busy")
    # past the bound: warned, then stopped, busy as it is; the member gets the unit
    assert pass_until(hub, "bo", "warn", timeout=60) == ("warn", "reclaim")
    assert pass_until(hub, "bo", "cull", timeout=60) == ("cull", "reclaim")
    hub.wait_ready("cole", timeout=180)
    hub.stop_server("cole")
