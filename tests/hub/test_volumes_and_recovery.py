"""User files and GPU units across restarts: of servers, of the hub (even SIGKILL), and bad config."""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path

import pytest
from harness import container_of, exec_as_user, fake_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def _tutorials(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for name, text in files.items():
        path = root / name
        path.write_text(text)
        path.chmod(0o644)
    return root


def test_tutorials_readonly_scratch_private_and_edits_kept(docker_client, hub_factory, tmp_path):
    tutorials = _tutorials(tmp_path / "tutorials", {"intro.py": "print('v1')\n", "data.txt": "one\n"})
    hub = hub_factory({"gpu_inventory": fake_gpus(2, "v1"), "tutorials_source": str(tutorials)})
    hub.create_users(["alice", "bob"])
    hub.spawn("alice", {"profile": "gpu"})
    hub.wait_ready("alice")
    alice = container_of(docker_client, hub, "alice")

    code, out = exec_as_user(alice, "echo x > ~/tutorials/intro.py")
    assert code != 0 and "Read-only file system" in out
    code, out = exec_as_user(alice, "touch ~/tutorials/new.txt")
    assert code != 0
    code, out = exec_as_user(alice, "echo secret-of-alice > ~/scratch/notes.txt && cat ~/my-tutorials/intro.py")
    assert code == 0 and out.strip() == "print('v1')"
    assert exec_as_user(alice, "echo \"print('mine')\" > ~/my-tutorials/intro.py")[0] == 0
    assert exec_as_user(alice, "test -S /var/run/docker.sock")[0] != 0

    hub.spawn("bob", {"profile": "gpu"})
    hub.wait_ready("bob")
    bob = container_of(docker_client, hub, "bob")
    code, out = exec_as_user(bob, "ls -A ~/scratch; grep -rs secret-of-alice / --exclude-dir=proc --exclude-dir=sys")
    assert "notes.txt" not in out and "secret-of-alice" not in out, out

    # upstream changes the tutorials while alice is away
    hub.stop_server("alice")
    _tutorials(tutorials, {"intro.py": "print('v2')\n", "data.txt": "two\n", "lesson2.py": "pass\n"})
    hub.spawn("alice", {"profile": "gpu"})
    hub.wait_ready("alice")
    alice = container_of(docker_client, hub, "alice")
    checks = {
        "cat ~/scratch/notes.txt": "secret-of-alice",  # scratch survived stop/start
        "cat ~/my-tutorials/intro.py": "print('mine')",  # the user's edit was kept ...
        "cat ~/my-tutorials/intro.upstream.py": "print('v2')",  # ... with the new version beside it
        "cat ~/my-tutorials/data.txt": "two",  # unedited files follow upstream
        "cat ~/my-tutorials/lesson2.py": "pass",  # new files arrive
        "cat ~/tutorials/intro.py": "print('v2')",  # the shared copy is always the latest
    }
    for cmd, expected in checks.items():
        code, out = exec_as_user(alice, cmd)
        assert code == 0 and out.strip() == expected, (cmd, out)


def test_hub_sigkilled_mid_spawn_loses_and_doubles_nothing(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(4, "k1"), "gpu_queue_max_wait": 0})
    early, in_flight, later = ["r1", "r2"], ["p1", "p2", "p3"], ["n1", "n2", "n3", "n4"]
    hub.create_users(early + in_flight + later)
    for user in early:
        hub.spawn(user, {"profile": "gpu"})
        hub.wait_ready(user)
    before = {u: container_of(docker_client, hub, u) for u in early}

    pool = cf.ThreadPoolExecutor(len(in_flight))
    for user in in_flight:
        pool.submit(hub.spawn_quietly, user, {"profile": "gpu"})
    time.sleep(1.0)
    hub.kill()  # SIGKILL while those spawns are being created/started
    pool.shutdown(wait=True)

    hub.start()
    time.sleep(3)  # let the restarted hub check the servers it finds
    # servers that were running keep their container and unit
    for user, old in before.items():
        now = container_of(docker_client, hub, user)
        assert now.id == old.id and now.status == "running"
        assert now.labels["org.gpuhub.unit"] == old.labels["org.gpuhub.unit"]
        assert hub.user(user)["servers"][""]["ready"]

    # fill the hub: every unit must be reachable exactly once
    for user in later:
        hub.spawn(user, {"profile": "gpu"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(hub.pending(u) for u in in_flight + later):
        time.sleep(1)
    running = [c for c in hub.containers(docker_client, all=False) if "org.gpuhub.unit" in c.labels]
    units = [c.labels["org.gpuhub.unit"] for c in running]
    assert len(units) == len(set(units)), units  # never given to two servers
    assert len(units) == 4, [(c.name, c.labels["org.gpuhub.unit"]) for c in running]  # none lost
    ready = [u for u in early + in_flight + later if hub.user(u)["servers"].get("", {}).get("ready")]
    assert sorted(ready) == sorted(c.labels["org.gpuhub.user"] for c in running)


@pytest.mark.parametrize(
    "spawner_config, env, expected",
    [
        pytest.param(
            {"gpu_inventory": [{"uuid": "0"}]},
            {},
            "c.GPUDockerSpawner.gpu_inventory[0]: '0' is not a GPU UUID",
            id="index-instead-of-uuid",
        ),
        pytest.param(
            {"gpu_inventory": [{"uuid": "GPU-x1", "mig": [{"uuid": "MIG-y", "profile": "huge"}]}]},
            {},
            "gpu_inventory[0].mig[0]: 'huge' is not a MIG profile name",
            id="bad-mig-profile",
        ),
        pytest.param(
            {"gpu_profiles": [{"slug": "big", "pool": "mig-7g.80gb"}], "gpu_inventory": fake_gpus(1, "z")},
            {},
            "gpu_profiles[0]: pool 'mig-7g.80gb' has no GPU units on this hub",
            id="profile-without-pool",
        ),
        pytest.param({}, {"GPUHUB_GPU_INVENTORY": "[{oops"}, "GPUHUB_GPU_INVENTORY: not valid JSON", id="bad-json"),
    ],
)
def test_bad_inventory_config_stops_the_hub_at_start(docker_client, hub_factory, spawner_config, env, expected):
    if env:
        hub = hub_factory({}, start=False)
    else:
        hub = hub_factory(spawner_config, start=False)
    code, log = hub.start_refused(env)
    assert code != 0
    assert expected in log, log[-2000:]
    assert "configuration error" in log and "Traceback" not in log


def test_container_removed_behind_the_hubs_back_frees_its_unit(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "g1"), "gpu_queue_max_wait": 0})
    hub.create_users(["olga", "pete"])
    hub.spawn("olga", {"profile": "gpu"})
    hub.wait_ready("olga")
    container = container_of(docker_client, hub, "olga")
    unit = container.labels["org.gpuhub.unit"]
    container.remove(force=True)  # an operator's `docker rm -f`, unknown to the hub

    r = hub.spawn("pete", {"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("pete")
    assert container_of(docker_client, hub, "pete").labels["org.gpuhub.unit"] == unit


def test_restarted_hub_rebuilds_the_held_set_from_labels(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(2, "h1"), "gpu_queue_max_wait": 0})
    hub.create_users(["quin", "rita", "sam"])
    hub.spawn("quin", {"profile": "gpu"})
    hub.wait_ready("quin")
    held = container_of(docker_client, hub, "quin").labels["org.gpuhub.unit"]
    hub.stop()
    hub.start()
    # the restarted hub knows quin's unit is taken: rita gets the other one, sam is refused
    hub.spawn("rita", {"profile": "gpu"})
    hub.wait_ready("rita")
    assert container_of(docker_client, hub, "rita").labels["org.gpuhub.unit"] != held
    r = hub.spawn("sam", {"profile": "gpu"})
    assert r.status_code == 503 and "All 2 whole GPU units are in use" in r.json()["message"]
    assert container_of(docker_client, hub, "quin").labels["org.gpuhub.unit"] == held


def test_running_server_sees_a_newly_published_version_at_once(docker_client, hub_factory, tmp_path):
    # the layout the tutorial-sync service publishes: versions/<commit>/ and a `current` link
    store = tmp_path / "store"
    _tutorials(store / "versions" / "c1", {"intro.py": "print('c1')\n"})
    (store / "versions").chmod(0o755)
    store.chmod(0o755)
    (store / "current").symlink_to("versions/c1")
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "p1"), "tutorials_source": str(store)})
    hub.create_users(["uma"])
    hub.spawn("uma", {"profile": "gpu"})
    hub.wait_ready("uma")
    uma = container_of(docker_client, hub, "uma")
    assert exec_as_user(uma, "cat ~/tutorials/intro.py") == (0, "print('c1')\n")
    assert exec_as_user(uma, "cat ~/my-tutorials/intro.py") == (0, "print('c1')\n")

    _tutorials(store / "versions" / "c2", {"intro.py": "print('c2')\n", "new.py": "pass\n"})
    (store / "next").symlink_to("versions/c2")
    (store / "next").replace(store / "current")  # the atomic switch
    assert exec_as_user(uma, "cat ~/tutorials/intro.py ~/tutorials/new.py") == (0, "print('c2')\npass\n")
    code, out = exec_as_user(uma, "ls ~/tutorials")
    assert out.split() == ["intro.py", "new.py"]  # the versions themselves stay out of sight
