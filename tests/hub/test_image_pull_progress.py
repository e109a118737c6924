"""Spawn progress shows image pulls, and a pull that fails says what to do.

Single host: a real hub and Docker engine pulling, under ``pull_policy = "ifnotpresent"``, from
Debian's ``docker-registry`` (tests/support/registry.py) reached over a slow link (each new
connection waits 2 s), so the spawn is still pending when the progress stream is read; an image
the registry does not hold is its own "manifest unknown".  Swarm: the loop that follows a
service's task, fed a recorded sequence of task states (a rig test per state would take
minutes); the task dicts have the fields the engine's ``docker service ps`` API gives.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from harness import fake_gpus
from jupyterhub.spawner import SpawnException
from offline_spawner import offline_spawner
from registry import Registry, SlowLink, push_tiny_image

from gpuhub_spawner.core.cluster import ClusterView, NodeInfo
from gpuhub_spawner.hub import progress
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner
from gpuhub_spawner.storage.ledger import UsageLedger

# ---- single host -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = Registry(Path(tmp_path_factory.mktemp("registry")))
    yield server
    server.stop()


@pytest.fixture
def slow_registry(registry: Registry) -> Iterator[str]:
    """``host:port`` of the registry behind a link that holds each connection 2 s."""
    link = SlowLink(registry.address, delay=2.0)
    yield link.address
    link.close()


@pytest.mark.docker
@pytest.mark.hub
def test_a_failed_pull_is_shown_then_told_plainly_and_holds_no_unit(docker_client, hub_factory, slow_registry):
    missing = f"{slow_registry}/gpuhub-test/absent-{secrets.token_hex(4)}:1"
    # the POST answers at once (202) and the page follows the progress stream, as for a long pull
    hub = hub_factory(extra='c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n', spawner_config={
        "gpu_inventory": fake_gpus(1, "pl"),
        "gpu_queue_max_wait": 0,
        "pull_policy": "ifnotpresent",
        "gpu_profiles": [{"slug": "gpu", "pool": "gpu"}, {"slug": "big-image", "pool": "gpu"}],
        "gpu_profile_images": {"big-image": missing},
    })
    hub.create_users(["pia", "quinn"])

    outcome = hub.watch_spawn("pia", {"profile": "big-image"}, timeout=120)
    assert outcome.status in (201, 202), outcome
    assert f"Pulling image {missing} onto the host… (large images take minutes)" in outcome.messages, outcome
    assert outcome.failure == (  # JupyterHub's prefix, then the message, no engine text
        f"Spawn failed: The server image '{missing}' is not on this machine and could not be pulled. Tell the hub's "
        f"admin: build it with images/build.sh, or pull it onto the host beforehand (docker pull {missing})."
    ), outcome
    log = hub.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert f"image {missing} unavailable for pia" in log  # the engine's own words: in the log only

    # nothing holds the GPU: no container of pia's, no open usage interval, and the only unit is free
    hub.wait_stopped("pia")
    assert not [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == "pia"]
    ledger = UsageLedger(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
    try:
        assert [row for row in ledger.open_intervals() if row.user == "pia"] == []
    finally:
        ledger.dispose()
    r = hub.spawn("quinn", {"profile": "gpu"})  # queue wait 0: refused at once if the unit were held
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("quinn")


@pytest.mark.docker
@pytest.mark.hub
def test_a_pull_is_shown_before_and_after(docker_client, hub_factory, registry, slow_registry):
    """A pull that works: told before it starts and when it is done, then the start goes on
    (this one-file image has no server in it, so the start then fails: only the pull counts)."""
    repository = f"gpuhub-test/tiny-{secrets.token_hex(4)}"
    push_tiny_image(docker_client, f"{registry.address}/{repository}:1")
    assert registry.tags(repository) == ["1"]
    image = f"{slow_registry}/{repository}:1"
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)  # so the spawn must pull it
    hub = hub_factory(extra='c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n', spawner_config={
        "pull_policy": "ifnotpresent", "cmd": ["/hello.txt"],
        "gpu_profiles": [{"slug": "tiny", "pool": None}], "gpu_profile_images": {"tiny": image},
    })
    try:
        hub.create_users(["sal"])
        outcome = hub.watch_spawn("sal", {"profile": "tiny"}, timeout=120)
        pulling = f"Pulling image {image} onto the host… (large images take minutes)"
        assert pulling in outcome.messages and f"Pulled image {image}." in outcome.messages, outcome
        assert outcome.messages.index(pulling) < outcome.messages.index(f"Pulled image {image}.")
        assert docker_client.images.get(image)
    finally:
        hub.cleanup(docker_client)  # its container first, then the image it pulled
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image, force=True)


@pytest.mark.docker
@pytest.mark.hub
def test_a_present_image_is_not_pulled(docker_client, hub_factory):
    hub = hub_factory({"gpu_profiles": [{"slug": "cpu", "pool": None}], "pull_policy": "ifnotpresent"})
    hub.create_users(["rae"])
    outcome = hub.watch_spawn("rae", {"profile": "cpu"}, timeout=120)
    assert outcome.ready, outcome
    assert not [m for m in outcome.messages if "Pulling image" in m], outcome


# ---- swarm: the task's states, as the node goes through them ------------------------------

NODE_ID = "n0de1d000000000000000000a"


def _task(state: str, message: str = "", err: str = "") -> dict:
    status = {"State": state, "Message": message, **({"Err": err} if err else {})}
    return {"ID": "t1", "NodeID": NODE_ID, "DesiredState": "running", "CreatedAt": "2026-01-01T00:00:00Z",
            "Status": status}


def _swarm_spawner(tasks: list[dict]) -> GPUSwarmSpawner:
    """A swarm spawner whose service's task goes through ``tasks`` (one per look), on node w-pull."""
    spawner = offline_spawner(
        GPUSwarmSpawner, "ann", gpu_hub_id=f"pull-{secrets.token_hex(3)}", usage_db_url="", tutorials_source="",
        image="gpuhub/workshop:latest",
    )
    spawner._gate().learn(ClusterView(nodes={NODE_ID: NodeInfo(NODE_ID, "w-pull", "10.0.0.9", "ready", "active", "worker")}))
    looks: Iterator[dict] = iter(tasks)
    last = tasks[-1]

    async def current_task():
        return next(looks, last)

    spawner._current_task = current_task
    spawner._progress_init()
    return spawner


async def test_a_preparing_task_says_the_node_is_getting_the_image(monkeypatch):
    monkeypatch.setattr(progress, "PULL_NOTE_EVERY", 0.4)  # 30 s on a real hub
    spawner = _swarm_spawner([
        _task("assigned", "scheduler assigned task to node"),
        *[_task("preparing", "preparing")] * 6,  # about 3 s of looks
        _task("starting", "starting"),
        _task("running", "started"),
    ])
    await spawner.start_object()
    messages = [e["message"] for e in spawner._progress_events]
    pulling = (
        "Getting the image gpuhub/workshop:latest onto node w-pull if it is not there yet: this happens "
        "once per node, and a large image takes minutes…"
    )
    assert messages.count(pulling) == 1, messages  # once, however long the node takes
    still = [m for m in messages if m.startswith("Still getting the image gpuhub/workshop:latest onto node w-pull (")]
    assert still and len(still) == len(set(still)), messages  # the wait is never silent, and moves on
    assert messages.index("Placed on a node; preparing…") < messages.index(pulling)
    assert messages.index(pulling) < messages.index(still[0])
    assert messages.index(still[-1]) < messages.index("Starting your server…")


async def test_a_node_that_cannot_get_the_image_says_what_to_do():
    spawner = _swarm_spawner([
        _task("preparing", "preparing"),
        _task("rejected", "No such image: gpuhub/workshop:latest", err="No such image: gpuhub/workshop:latest"),
    ])
    with pytest.raises(SpawnException) as failed:
        await spawner.start_object()
    assert failed.value.jupyterhub_message == (
        "Your server could not start on node w-pull: the node lacks the server image "
        "'gpuhub/workshop:latest' and could not pull it. Tell the hub's admin: run `gpuhub node prepull` "
        "before the workshop, or push the image to a registry the nodes can reach."
    )
    assert failed.value.gpuhub_reason == "image-missing"


async def test_a_start_that_raised_is_not_reported_stopped_while_jupyterhub_cleans_up():
    """JupyterHub polls a Start's server when slow_spawn_timeout passes; during the stop that
    follows a start that raised, "stopped" would make that request answer a bare 500 (the stack's
    0.5 s timeout meets this in a burst).  Until then, and once the stop is over, poll says what
    the swarm says."""
    spawner = _swarm_spawner([_task("running", "started")])
    asked = []

    async def service_gone():
        asked.append(True)
        return 0

    spawner._poll_service = service_gone
    spawner._start_failed, spawner._stop_pending = True, True
    assert await spawner.poll() is None and not asked
    spawner._stop_pending = False
    assert await spawner.poll() == 0 and asked
    spawner._start_failed, spawner._stop_pending = False, True  # an ordinary stop asks the swarm
    assert await spawner.poll() == 0
