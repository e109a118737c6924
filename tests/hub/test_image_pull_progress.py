"""Spawn progress shows image pulls, and a pull that fails says what to do.

Single host: a real hub and Docker engine pulling, under ``pull_policy = "ifnotpresent"``, from
a registry in this process that knows no image (it answers the registry API's ping, then "name
unknown" after a pause, as a registry without the image does), so the spawn is still pending
when the progress stream is read.  Swarm: the loop that
follows a service's task, fed a recorded sequence of task states (a rig test per state would
take minutes); the task dicts have the fields the engine's ``docker service ps`` API gives.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from harness import fake_gpus
from jupyterhub.spawner import SpawnException
from offline_spawner import offline_spawner

from gpuhub_spawner.core.cluster import ClusterView, NodeInfo
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner
from gpuhub_spawner.storage.ledger import UsageLedger

# ---- single host -------------------------------------------------------------------------


class _NoSuchImage(http.server.BaseHTTPRequestHandler):
    """A registry (API v2) that has no image: each manifest request waits, then "name unknown"."""

    delay = 2.0

    def _answer(self) -> None:
        if self.path.rstrip("/") == "/v2":
            code, body = 200, b"{}"
        else:
            time.sleep(self.delay)
            error = {"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}
            code, body = 404, json.dumps({"errors": [error]}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def empty_registry() -> Iterator[str]:
    """``host:port`` of a registry without images (dockerd pulls from 127.0.0.1 over plain HTTP)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.docker
@pytest.mark.hub
def test_a_failed_pull_is_shown_then_told_plainly_and_holds_no_unit(docker_client, hub_factory, empty_registry):
    missing = f"{empty_registry}/gpuhub-test/absent-{secrets.token_hex(4)}:1"
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


async def test_a_preparing_task_says_the_node_is_pulling_the_image():
    spawner = _swarm_spawner([
        _task("assigned", "scheduler assigned task to node"),
        _task("preparing", "preparing"),
        _task("preparing", "preparing"),
        _task("starting", "starting"),
        _task("running", "started"),
    ])
    await spawner.start_object()
    messages = [e["message"] for e in spawner._progress_events]
    pulling = (
        "Node w-pull is preparing your server: pulling image gpuhub/workshop:latest if it lacks it… "
        "(large images take minutes)"
    )
    assert messages.count(pulling) == 1, messages  # once, however long the node takes
    assert messages.index("Placed on a node; preparing…") < messages.index(pulling)
    assert messages.index(pulling) < messages.index("Starting your server…")


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
