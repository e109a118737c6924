"""Allocator edges on a real Docker engine: engine errors in poll and stop never hand a GPU on.

The spawners talk to the real engine through its real client; where the engine cannot be made to
fail on cue, one call is made to fail the way the real client fails (``docker.errors.APIError``
built from an HTTP 500/409 response).  The hub-level test makes a real container refuse to stop
in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import secrets
import threading
import time
from types import SimpleNamespace

import docker
import pytest
import requests
from harness import TEST_LABEL, fake_gpus
from jupyterhub.spawner import SpawnException
from offline_spawner import offline_spawner

from gpuhub_spawner.hub.allocator import NoUnitFree
from gpuhub_spawner.hub.spawners import GPUDockerSpawner
from gpuhub_spawner.hub.state import HubState
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner

pytestmark = [pytest.mark.docker]

BASE_IMAGE = "gpuhub/debian-base:bookworm"
RAW = ("Server Error", "Client Error", "Conflict", "500", "409", "http+docker", "GPU-", "Traceback")


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    """The APIError the real client raises for an engine answer with ``status``."""
    response = requests.Response()
    response.status_code = status
    response.reason = {500: "Internal Server Error", 409: "Conflict"}.get(status, "Error")
    response.url = "http+docker://localhost/v1.41/containers/x"
    response._content = json.dumps({"message": explanation}).encode()
    try:
        response.raise_for_status()
    except requests.HTTPError as e:
        try:
            docker.errors.create_api_error_from_http_exception(e)
        except docker.errors.APIError as converted:
            return converted
    raise AssertionError("not converted to an APIError")


class FlakyClient:
    """The real low-level client; a method named in ``fail`` raises its error instead."""

    def __init__(self) -> None:
        self.real = docker.APIClient(version="auto")
        self.fail: dict[str, Exception] = {}
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            if name in self.fail:
                raise self.fail[name]
            return attr(*args, **kwargs)

        return call


def _spawner(cls, client: FlakyClient, hub_id: str, user: str = "ann", **config):
    flaky = type(f"Flaky{cls.__name__}", (cls,), {"_client": client})
    settings = {
        "gpu_inventory": fake_gpus(1, hub_id),
        "gpu_discovery": "static",
        "gpu_hub_id": hub_id,
        "prefix": hub_id,
        "image": BASE_IMAGE,
        "cmd": ["sleep", "infinity"],
        "usage_db_url": "",
        "client_kwargs": {"base_url": f"unix:///var/run/docker.sock#{hub_id}"},  # its own allocator
    }
    return offline_spawner(flaky, user, **{**settings, **config})


@pytest.fixture
def engine(docker_client):
    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{BASE_IMAGE} missing: run deploy/setup-host.sh")
    hub_id = "e" + secrets.token_hex(4)
    yield SimpleNamespace(hub_id=hub_id, client=FlakyClient(), docker=docker_client)
    for c in docker_client.containers.list(all=True, filters={"label": f"org.gpuhub.hub={hub_id}"}):
        c.remove(force=True)
    HubState.forget(hub_id)


def _run_labelled(engine, spawner, unit_id: str):
    """A running container labelled as ``spawner``'s server holding ``unit_id``."""
    return engine.docker.containers.run(
        BASE_IMAGE,
        ["sleep", "infinity"],
        name=spawner.object_name,
        detach=True,
        labels={
            TEST_LABEL: "1",
            "org.gpuhub.hub": engine.hub_id,
            "org.gpuhub.user": spawner.user.name,
            "org.gpuhub.server": "",
            "org.gpuhub.unit": unit_id,
        },
    )


async def _holding(engine, spawner):
    """``spawner`` holds the one unit through a real running container."""
    unit = spawner.gpu_inventory_resolved.units[0]
    container = await asyncio.to_thread(_run_labelled, engine, spawner, unit.id)
    await spawner.sync_allocations()
    allocator = spawner.get_allocator()
    assert allocator.unit_of(spawner.object_name) == unit
    spawner.gpu_unit_id = unit.id
    spawner.object_id = container.id
    return allocator, unit, container


async def _nobody_else_gets(allocator, holder: str = "someone-else") -> None:
    with pytest.raises(NoUnitFree):
        async with allocator.reserve("gpu", holder):
            pytest.fail("the unit was handed on")


def _clean(message: str) -> None:
    for raw in RAW:
        assert raw not in message, message


# ---- poll ------------------------------------------------------------------------------


async def test_engine_500_in_poll_keeps_the_server_and_its_unit(engine):
    spawner = _spawner(GPUDockerSpawner, engine.client, engine.hub_id)
    allocator, unit, container = await _holding(engine, spawner)

    engine.client.fail["inspect_container"] = api_error(500, "an error occurred on the engine")
    assert await spawner.poll() is None  # unknown, not stopped
    assert allocator.unit_of(spawner.object_name) == unit
    await _nobody_else_gets(allocator)

    del engine.client.fail["inspect_container"]
    assert await spawner.poll() is None  # the engine answers: still running
    await asyncio.to_thread(container.kill)
    await asyncio.to_thread(container.wait, timeout=30)
    assert await spawner.poll() is not None  # the engine says it has stopped: now it is free
    assert allocator.unit_of(spawner.object_name) is None


async def test_engine_500_in_swarm_poll_is_not_a_stopped_server(engine):
    spawner = _spawner(GPUSwarmSpawner, engine.client, engine.hub_id)
    spawner.object_id = "svc-id"
    engine.client.fail["inspect_service"] = api_error(500, "rpc error: code = Unknown")
    assert await spawner.poll() is None
    assert "remove_service" not in engine.client.calls


# ---- stop, and the next start --------------------------------------------------------------


async def _refused_still_holding(call, opening: str, allocator, spawner, unit) -> None:
    """``call()`` fails as engine-unavailable in plain words, and the unit stays this server's."""
    with pytest.raises(SpawnException) as refused:
        await call()
    assert refused.value.reason == "engine-unavailable"
    assert refused.value.message.startswith(opening), refused.value.message
    _clean(refused.value.message)
    assert allocator.unit_of(spawner.object_name) == unit
    await _nobody_else_gets(allocator)


async def test_failed_stop_keeps_the_unit_and_says_so_plainly(engine):
    spawner = _spawner(GPUDockerSpawner, engine.client, engine.hub_id)
    spawner.leftover_retry_delays = (0.3,) * 100
    allocator, unit, container = await _holding(engine, spawner)
    engine.client.fail["stop"] = api_error(500, "cannot stop container: tried to kill container, but did not receive an exit event")
    engine.client.fail["remove_container"] = api_error(500, "could not kill running container, cannot remove")

    # the container still runs with the GPU: the unit stays held, also across a re-read of the labels
    await _refused_still_holding(
        spawner.stop, "The container engine could not stop your server.", allocator, spawner, unit
    )

    # the hub forgets the server (JupyterHub clears its state); the user starts it again
    spawner.clear_state()
    spawner.user_options = {"profile": "gpu"}
    await _refused_still_holding(
        spawner.start, "Your previous server is still shutting down and holds its GPU.", allocator, spawner, unit
    )

    # the engine recovers: the hub's retries remove the leftover by force, and only then is
    # the unit free (nobody had to stop anything again)
    engine.client.fail.clear()
    for _ in range(100):
        if allocator.unit_of(spawner.object_name) is None:
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(_gone, engine.docker, container.id)
    assert allocator.unit_of(spawner.object_name) is None


def _gone(client, container_id: str) -> None:
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_id)


async def test_stop_that_times_out_removes_the_container_by_force(engine):
    """docker stop fails (the client gave up waiting): the container is killed and removed,
    then its unit is free; never freed while the container still runs."""
    spawner = _spawner(GPUDockerSpawner, engine.client, engine.hub_id)
    allocator, unit, container = await _holding(engine, spawner)
    engine.client.fail["stop"] = requests.exceptions.ReadTimeout("Read timed out. (read timeout=70)")
    await spawner.stop()
    await asyncio.to_thread(_gone, engine.docker, container.id)
    assert allocator.unit_of(spawner.object_name) is None


async def test_engine_conflict_on_create_is_a_clear_message(engine):
    spawner = _spawner(GPUDockerSpawner, engine.client, engine.hub_id)
    spawner.user_options = {"profile": "gpu"}
    engine.client.fail["create_container"] = api_error(
        409, 'Conflict. The container name "/x" is already in use by container "4cff7d5"'
    )
    with pytest.raises(SpawnException) as failed:
        await spawner.start()
    assert failed.value.reason == "engine-unavailable", failed.value.log_message
    assert failed.value.message == (
        "The container engine could not start your server. Please try again in a minute; "
        "if it keeps happening, tell the hub's admin."
    ), failed.value.log_message
    assert "already in use" in failed.value.log_message  # the operator still sees what happened
    assert spawner.get_allocator().unit_of(spawner.object_name) is None  # nothing was created


async def test_hub_side_fault_is_a_clear_message(engine):
    """A fault of the hub itself (here its usage database refuses connections) reaches the user
    as a plain message; the details go to the log only."""
    url = "postgresql+psycopg://gpuhub@127.0.0.1:9/nowhere"
    spawner = _spawner(GPUDockerSpawner, engine.client, engine.hub_id, usage_db_url=url)
    spawner.user_options = {"profile": "gpu"}
    try:
        with pytest.raises(SpawnException) as failed:
            await spawner.start()
    finally:
        spawner.hub_state.forget_ledger(url)
    assert failed.value.reason == "engine-unavailable"
    assert failed.value.message == (
        "Your server could not start because of an error on the hub. Please try again in a minute; "
        "if it keeps happening, tell the hub's admin."
    ), failed.value.message
    assert "127.0.0.1" in failed.value.log_message


async def test_swarm_stop_error_is_a_clear_message(engine):
    spawner = _spawner(GPUSwarmSpawner, engine.client, engine.hub_id)
    spawner.object_id = "svc-id"
    engine.client.fail["remove_service"] = api_error(500, "rpc error: code = DeadlineExceeded")
    with pytest.raises(SpawnException) as stopped:
        await spawner.stop()
    assert stopped.value.reason == "engine-unavailable"
    _clean(stopped.value.message)


# ---- a real hub: a server that refuses to stop in time ---------------------------------------


class UnitWatch:
    """Samples the engine: every moment two running containers shared a GPU unit."""

    def __init__(self, client, hub) -> None:
        self.client, self.hub = client, hub
        self.overlaps: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                running = self.hub.containers(self.client, all=False)
            except (docker.errors.APIError, requests.RequestException):
                running = []
            by_unit: dict[str, list[str]] = {}
            for c in running:
                unit = c.labels.get("org.gpuhub.unit")
                if unit:
                    by_unit.setdefault(unit, []).append(c.labels.get("org.gpuhub.user", "?"))
            self.overlaps += [(u, users) for u, users in by_unit.items() if len(users) > 1]
            self._stop.wait(0.3)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.hub
def test_server_that_refuses_to_stop_never_shares_its_gpu(docker_client, hub_factory):
    # the server ignores its stop signal and the engine would wait 300 s before killing it;
    # the hub's engine client gives up after 8 s (+10 s for a stop): the stop fails for real
    hub = hub_factory(
        {
            "gpu_inventory": fake_gpus(1, "st"),
            "gpu_queue_max_wait": 120,
            "extra_create_kwargs": {"stop_signal": "SIGWINCH", "stop_timeout": 300},
            "client_kwargs": {"timeout": 8},
        }
    )
    hub.create_users(["ann", "bob"])
    assert hub.spawn("ann", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("ann")
    # (a spawn in line answers its POST only after the hub's slow_spawn_timeout, 10 s: the
    # progress stream tells it at once)
    pool = cf.ThreadPoolExecutor(2)
    with UnitWatch(docker_client, hub) as watch:
        bob = pool.submit(hub.spawn, "bob", {"profile": "gpu"}, 30)
        hub.wait_in_line("bob")
        r = hub.api("DELETE", "/users/ann/server", timeout=60)
        assert r.status_code in (202, 204), r.text
        assert bob.result().status_code == 202  # in line
        # ann starts again as soon as the hub lets her (old code: a raw "Conflict")
        deadline = time.monotonic() + 60
        while hub.user("ann").get("servers") and time.monotonic() < deadline:
            time.sleep(0.1)
        again = pool.submit(hub.spawn, "ann", {"profile": "gpu"}, 60)
        ann_in_line, _ = hub.until_in_line("ann", unless=again.done)  # else refused or failed: its answer
        hub.wait_ready("bob")
        if not ann_in_line and again.result().status_code >= 400:
            _clean(again.result().json()["message"])
    pool.shutdown(wait=False)  # ann's POST, if she waits in line, is answered later
    assert not watch.overlaps, watch.overlaps  # never two running servers on one GPU
    running = [c for c in hub.containers(docker_client, all=False) if c.labels.get("org.gpuhub.unit")]
    assert [c.labels["org.gpuhub.user"] for c in running] == ["bob"]
