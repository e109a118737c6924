"""GPUDockerSpawner through a real JupyterHub, its proxy and a real Docker engine.

GPUs are the only fake: the inventory lists made-up UUIDs and dockerd runs with a no-op
NVIDIA hook, so GPU DeviceRequests start without a driver (see deploy/setup-host.sh).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from harness import container_of, fake_gpus, fake_mig_gpu, render_form, server_env

from gpuhub_spawner.storage.ledger import UsageLedger

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def test_gpu_unit_reaches_the_container(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": [fake_mig_gpu("a1", ["1g.10gb", "1g.10gb"]), *fake_gpus(1, "a1")]})
    hub.create_users(["alice", "bob"])

    assert hub.spawn("alice", {"profile": "mig-1g-10gb"}).status_code in (201, 202)
    assert hub.spawn("bob", {"profile": "gpu"}).status_code in (201, 202)
    for user, kind in (("alice", "mig"), ("bob", "gpu")):
        hub.wait_ready(user)
        container = container_of(docker_client, hub, user)
        unit = container.labels["org.gpuhub.unit"]
        requests_ = container.attrs["HostConfig"]["DeviceRequests"]
        assert [r["DeviceIDs"] for r in requests_] == [[unit]]
        assert requests_[0]["Capabilities"] == [["gpu"]]
        env = server_env(container)
        assert env["NVIDIA_VISIBLE_DEVICES"] == unit == env["GPUHUB_GPU_UNIT"]
        assert unit.startswith("MIG-" if kind == "mig" else "GPU-")

    alice_unit = container_of(docker_client, hub, "alice").labels["org.gpuhub.unit"]
    bob_unit = container_of(docker_client, hub, "bob").labels["org.gpuhub.unit"]
    assert alice_unit != bob_unit


def test_cpu_profile_gets_no_gpu(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "c1")})
    hub.create_users(["carol"])
    assert hub.spawn("carol", {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready("carol")
    container = container_of(docker_client, hub, "carol")
    assert not container.attrs["HostConfig"].get("DeviceRequests")
    assert "org.gpuhub.unit" not in container.labels
    assert server_env(container)["NVIDIA_VISIBLE_DEVICES"] == "void"


def _one_gpu_held(docker_client, hub_factory, tag: str, max_wait: float, holder: str, other: str):
    """A hub with one whole GPU (queue wait ``max_wait``), held by ``holder``'s ready server;
    ``other`` exists too. Returns the hub and the held unit's id."""
    hub = hub_factory({"gpu_inventory": fake_gpus(1, tag), "gpu_queue_max_wait": max_wait})
    hub.create_users([holder, other])
    hub.spawn(holder, {"profile": "gpu"})
    hub.wait_ready(holder)
    return hub, container_of(docker_client, hub, holder).labels["org.gpuhub.unit"]


def test_stop_releases_the_unit_for_the_next_user(docker_client, hub_factory):
    hub, unit = _one_gpu_held(docker_client, hub_factory, "s1", 0, "dan", "erin")

    refused = hub.spawn("erin", {"profile": "gpu"})
    assert refused.status_code == 503
    assert "All 1 whole GPU units are in use" in refused.json()["message"]

    hub.stop_server("dan")
    assert hub.spawn("erin", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("erin")
    assert container_of(docker_client, hub, "erin").labels["org.gpuhub.unit"] == unit


def test_a_spawn_that_times_out_in_line_tells_the_user_plainly(docker_client, hub_factory):
    """The progress stream (what the spawn page shows) says the user's message, not the log's
    "503 SpawnException(reason=…): …" that JupyterHub 6.1 would build from the exception."""
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "t1"), "gpu_queue_max_wait": 3})
    hub.create_users(["holly", "ivan"])
    hub.spawn("holly", {"profile": "gpu"})
    hub.wait_ready("holly")
    outcome = hub.watch_spawn("ivan", {"profile": "gpu"}, timeout=120)
    assert outcome.failure is not None, outcome
    assert outcome.failure.startswith("Spawn failed: No whole GPU came free within"), outcome.failure
    assert "SpawnException" not in outcome.failure and "reason=" not in outcome.failure, outcome.failure


@pytest.mark.parametrize(
    "options, expected",
    [
        pytest.param({"profile": "no-such-thing"}, "There is no profile called 'no-such-thing'", id="unknown"),
        pytest.param({"profile": 42}, "'profile' must be a profile name", id="not-a-string"),
    ],
)
def test_bad_profile_is_a_clear_400(docker_client, hub_factory, options, expected):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "b1")})
    hub.create_users(["frank"])
    r = hub.spawn("frank", options)
    assert r.status_code == 400, r.text
    assert expected in r.json()["message"]
    assert not hub.containers(docker_client)


def test_forbidden_profile_is_refused_by_the_server(docker_client, hub_factory):
    # the form hides nothing here: the check is on the server side, whatever the client sends
    extra = (
        "from gpuhub_spawner import GPUDockerSpawner\n"
        "class OnlyCPU(GPUDockerSpawner):\n"
        "    async def allowed_profiles(self):\n"
        "        return {'cpu'}\n"
        "c.JupyterHub.spawner_class = OnlyCPU\n"
        "c.OnlyCPU.update(c.GPUDockerSpawner)\n"
    )
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "f1")}, extra=extra)
    hub.create_users(["gina"])
    r = hub.spawn("gina", {"profile": "gpu"})
    assert r.status_code == 400, r.text
    assert "You may not use the profile 'gpu'" in r.json()["message"]
    assert not hub.containers(docker_client)


def test_twelve_users_four_units_refused_at_once(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(4, "q0"), "gpu_queue_max_wait": 0})
    users = [f"u{i:02d}" for i in range(12)]
    hub.create_users(users)
    with cf.ThreadPoolExecutor(12) as pool:
        timed = list(pool.map(lambda u: _timed_spawn(hub, u), users))
    accepted = [u for u, (r, _) in zip(users, timed) if r.status_code in (201, 202)]
    refused = [(u, r, dt) for u, (r, dt) in zip(users, timed) if r.status_code == 503]
    assert len(accepted) == 4 and len(refused) == 8, [(u, r.status_code) for u, (r, _) in zip(users, timed)]
    for _user, r, _dt in refused:
        assert "All 4 whole GPU units are in use" in r.json()["message"]
    for user in accepted:
        hub.wait_ready(user)
    units = [container_of(docker_client, hub, u).labels["org.gpuhub.unit"] for u in accepted]
    assert len(set(units)) == 4
    # refusals were answered while the four winners were still being created, not after a timeout
    assert all(not hub.user(u)["servers"] for u, _r, _dt in refused)


def _timed_spawn(hub, user):
    t0 = time.monotonic()
    r = hub.spawn(user, {"profile": "gpu"})
    return r, time.monotonic() - t0


def test_twelve_users_four_units_queue_with_positions(docker_client, hub_factory):
    # the eight in line time out of it: the test waits that long (long enough for all eight
    # to be in line at once, which takes a second or two)
    hub = hub_factory({"gpu_inventory": fake_gpus(4, "q1"), "gpu_queue_max_wait": 12})
    users = [f"w{i:02d}" for i in range(12)]
    hub.create_users(users)
    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda u: hub.spawn(u, {"profile": "gpu"}, timeout=90).status_code, users))
    assert all(code in (201, 202) for code in codes), codes

    with cf.ThreadPoolExecutor(12) as pool:
        progress = dict(zip(users, pool.map(lambda u: hub.progress(u, timeout=90), users)))

    ready = [u for u in users if progress[u][-1].get("ready")]
    failed = [u for u in users if progress[u][-1].get("failed")]
    assert len(ready) == 4 and len(failed) == 8, {u: progress[u][-1] for u in users}
    positions = set()
    for user in failed:
        messages = [e.get("message", "") for e in progress[user]]
        in_line = [m for m in messages if "in line" in m and "You are #" in m]
        assert in_line, messages
        positions.update(int(m.split("#")[1].split()[0]) for m in in_line)
        assert "No whole GPU came free within" in messages[-1]
    assert positions >= {1, 8}, positions
    units = [container_of(docker_client, hub, u).labels["org.gpuhub.unit"] for u in ready]
    assert len(set(units)) == 4


def test_queued_user_gets_the_released_unit(docker_client, hub_factory):
    hub, unit = _one_gpu_held(docker_client, hub_factory, "q2", 60, "first", "second")

    with cf.ThreadPoolExecutor(1) as pool:
        post = pool.submit(hub.spawn, "second", {"profile": "gpu"}, 30)
        messages = hub.wait_in_line("second")  # in line while first holds the unit
        hub.stop_server("first")
        # answered when the spawn ends or after the hub's slow_spawn_timeout (10 s), whichever is first
        assert post.result().status_code in (201, 202)
    assert any("You are #1 of 1 in line" in m for m in messages), messages
    hub.wait_ready("second")
    assert container_of(docker_client, hub, "second").labels["org.gpuhub.unit"] == unit


def test_options_form_lists_profiles_with_free_counts(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": [*fake_gpus(2, "o1", replicas=2)]})
    hub.create_users(["hank"])
    hub.spawn("hank", {"profile": "shared"})
    hub.wait_ready("hank")
    # the form as the spawner renders it for another user
    r = hub.api("GET", "/users/hank")
    assert r.ok
    form = render_form(hub, "ivy")
    assert "shared GPU slot" in form and "3 of 4 free" in form
    assert "NOT isolated" in form
    assert "CPU only" in form


def test_engine_errors_are_reported_as_json(docker_client, hub_factory):
    # a spawn against an engine that is not there fails fast with a readable message
    hub = hub_factory(
        {"gpu_inventory": fake_gpus(1, "e1"), "client_kwargs": {"base_url": "unix:///nonexistent/docker.sock"}}
    )
    hub.create_users(["ken"])
    r = hub.spawn("ken", {"profile": "gpu"})
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert "container engine is not answering" in message
    assert "Traceback" not in message and "nonexistent" not in message
    json.dumps(message)


@pytest.mark.parametrize("half_life", [24, 0], ids=["fair-share", "off-first-come"])
def test_in_line_less_recent_gpu_use_goes_first_and_is_told_why(docker_client, hub_factory, half_life):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, f"f{half_life}"), "gpu_queue_max_wait": 60,
                       "gpu_fair_share_half_life": half_life})
    hub.create_users(["heavy", "light", "first"])
    hub.spawn("heavy", {"profile": "gpu"})  # heavy has used a GPU (the ledger has its interval)
    hub.wait_ready("heavy")
    hub.stop_server("heavy")
    form = render_form(hub, "heavy")  # the form says how a full pool's line is ordered
    assert ("people who used less GPU time lately go first in its line (yours: " in form) == bool(half_life), form
    hub.spawn("first", {"profile": "gpu"})
    hub.wait_ready("first")
    unit = container_of(docker_client, hub, "first").labels["org.gpuhub.unit"]
    with cf.ThreadPoolExecutor(2) as pool:
        pool.submit(hub.spawn, "heavy", {"profile": "gpu"}, 60)
        hub.wait_in_line("heavy")  # heavy asked first...
        light_post = pool.submit(hub.spawn, "light", {"profile": "gpu"}, 60)
        hub.wait_in_line("light")  # ...light, with no GPU time yet, asked second
        if half_life:
            told = hub.until_said("heavy", "who used less GPU time lately")
            assert "You are #2 of 2 in line" in told[-1], told
            assert "Ahead of you: 1 who used less GPU time lately. Yours: " in told[-1], told
            assert "GPU-minute" in told[-1] and "(past use counts half after 24 h)" in told[-1], told
        else:
            told = hub.until_said("light", "who asked first")
            assert "You are #2 of 2 in line" in told[-1] and "Ahead of you: 1 who asked first." in told[-1], told
        hub.stop_server("first")
        winner, waiter = ("light", "heavy") if half_life else ("heavy", "light")
        hub.wait_ready(winner)
        assert container_of(docker_client, hub, winner).labels["org.gpuhub.unit"] == unit
        assert hub.user(waiter)["servers"][""]["pending"] == "spawn"  # still in line
        light_post.result()


def test_in_line_the_likely_wait_comes_from_past_holds_and_the_log_compares_it(docker_client, hub_factory):
    """With too few finished holds the line says it has no estimate; with the pool's past holds
    (ten of 10..100 min, written to the ledger as the hub writes them) it gives the rule's range
    (gpuhub_spawner/core/waits.py); each wait ends with a wait-estimate log line."""
    hub, _unit = _one_gpu_held(docker_client, hub_factory, "w1", 60, "first", "second")
    hub.create_users(["third"])
    ledger = UsageLedger(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
    try:
        (held,) = ledger.open_allocations()
        with cf.ThreadPoolExecutor(2) as pool:
            pool.submit(hub.spawn, "second", {"profile": "gpu"}, 30)
            hub.wait_in_line("second")
            told = hub.until_said("second", "No wait estimate yet")
            told_at = time.monotonic()
            assert "You are #1 of 1 in line" in told[-1], told
            hub.stop_server("second")  # cancelled in line

            start = datetime.now(timezone.utc) - timedelta(days=2)
            for i, minutes in enumerate(range(10, 110, 10)):
                ledger.start(f"past{i}", "", held["unit_id"], held["pool"], f"past-{i}", now=start + timedelta(hours=2 * i))
                ledger.end(f"past-{i}", now=start + timedelta(hours=2 * i, minutes=minutes))
            time.sleep(max(0.0, told_at + 2.5 - time.monotonic()))  # past the window in which waiters share a read
            post = pool.submit(hub.spawn, "third", {"profile": "gpu"}, 30)
            hub.wait_in_line("third")
            told = hub.until_said("third", "Likely wait:")
            # first's hold began moments ago: the quartiles of all ten holds (32.5 and 77.5 min) less
            # the time first has held its unit
            assert re.search(r"Likely wait: about 3[12]–7[78] minutes \(from 10 recent servers' hold times\)\.",
                             told[-1]), told
            hub.stop_server("first")
            hub.wait_ready("third")
            post.result()
        # each finished wait is kept for the admin page: second's cancelled, third's served
        deadline = time.monotonic() + 30
        while len(kept := ledger.waits_since(start)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [(w.user, w.outcome, w.place, w.told_low is None, w.holds) for w in kept] == [
            ("second", "cancelled", 1, True, 0), ("third", "unit", 1, False, 10)], kept
    finally:
        ledger.dispose()
    log = hub.log_path.read_text()
    assert re.search(r"wait-estimate user=third pool=\S+ place=1 told=1[89]\d\d-46\d\d holds=10 waited=\d+ outcome=unit",
                     log), [line for line in log.splitlines() if "wait-estimate" in line]
