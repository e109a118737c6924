"""Fixtures shared by all tests: a real Docker engine and real JupyterHub processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from harness import IMAGE, HubProcess
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
    """Lanes for ``pytest -n N --dist loadgroup`` (deploy/gpuhub-test): every test on a swarm rig
    (the ``rig`` fixture) in one lane, so two rigs never share this machine's two cores; any other
    module whole in one lane, so its module fixtures (a hub, a database) are made once."""
    for item in items:
        group = "swarm-rig" if "rig" in getattr(item, "fixturenames", ()) else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))

