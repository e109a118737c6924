"""Fixtures shared by all tests: a real Docker engine and real JupyterHub processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from harness import IMAGE, HubProcess
from lanes import RIG_FILES, file_of
from needs import unavailable


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means no usable engine
        unavailable(f"no Docker engine: {e}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {IMAGE} missing: run images/build.sh")
    yield client
    client.close()


@pytest.fixture
def hub_factory(docker_client: docker.DockerClient, tmp_path: Path, request: pytest.FixtureRequest):
    """Start real hubs; on teardown dump their logs if the test failed, then remove everything."""
    hubs: list[HubProcess] = []

    def make(spawner_config: dict | None = None, extra: str = "", start: bool = True, **kw) -> HubProcess:
        hub = HubProcess(tmp_path / f"hub{len(hubs)}", spawner_config, extra, **kw)
        hubs.append(hub)
        if start:
            hub.start()
        return hub

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for hub in hubs:
        if failed:
            print(f"\n---- hub {hub.hub_id} log ----\n{hub.log_tail(120)}")
            for c in hub.containers(docker_client):
                print(f"---- container {c.name} ({c.status}) ----")
                try:
                    print(c.logs(tail=40).decode(errors="replace"))
                except docker.errors.APIError:
                    pass
        hub.cleanup(docker_client)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on a swarm rig must be in the rig lane's list (tests/support/lanes.py); under
    pytest-xdist the rig lane comes first, so the longest lane starts at once (a single pytest
    keeps the files' order: its engine-restart chaos test needs no rig up)."""
    on_rig = [item for item in items if "rig" in getattr(item, "fixturenames", ())]
    unlisted = sorted({file_of(item.nodeid) for item in on_rig} - RIG_FILES)
    if unlisted:
        raise pytest.UsageError(f"{', '.join(unlisted)} use the swarm rig: add them to RIG_FILES in "
                                "tests/support/lanes.py")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        first = [item for item in items if file_of(item.nodeid) in RIG_FILES]
        items[:] = first + [item for item in items if file_of(item.nodeid) not in RIG_FILES]
