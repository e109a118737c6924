"""The admission runs where JupyterHub expects request checks (``apply_user_options``): a refused
REST spawn is answered with its status and message before anything starts.

"Before anything starts" is checked from outside: the operator's ``pre_spawn_hook`` (which
JupyterHub runs after ``apply_user_options``) never runs for a refused request, and the real
engine's event stream shows no container or volume created for the hub.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import fake_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def _hub(hub_factory, tmp_path: Path, config: dict):
    marker_dir = tmp_path / "pre-spawn"
    marker_dir.mkdir()
    extra = (
        "import pathlib as _pathlib\n"
        "def _pre_spawn(spawner):\n"
        f"    (_pathlib.Path({str(marker_dir)!r}) / (spawner.user.name + '-' + (spawner.name or 'default'))).touch()\n"
        "c.Spawner.pre_spawn_hook = _pre_spawn\n"
        "c.JupyterHub.allow_named_servers = True\n"
    )
    return hub_factory({"gpu_inventory": fake_gpus(2, "adm"), **config}, extra=extra), marker_dir


def _created(docker_client, hub, since: float) -> list[str]:
    """Containers and volumes of ``hub`` the engine created since ``since`` (its event stream)."""
    events = docker_client.events(since=int(since), until=int(time.time()) + 1, decode=True)
    names = []
    for event in events:
        if event.get("Action") != "create" or event.get("Type") not in ("container", "volume"):
            continue
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get("name", "") or (event.get("Actor") or {}).get("ID", "")
        if name.startswith(hub.hub_id) or attributes.get("org.gpuhub.hub") == hub.hub_id:
            names.append(name)
    return names


REFUSALS = [
    pytest.param(
        {},
        "/users/ann/server",
        {"profile": 42},
        400,
        "'profile' must be a profile name, not int.",
        id="bad-body",
    ),
    pytest.param(
        {},
        "/users/ann/server",
        {"profile": "huge"},
        400,
        "There is no profile called 'huge'. Choose one of: cpu, gpu.",
        id="unknown-profile",
    ),
    pytest.param(
        {"quota_defaults": {"allowed_profiles": "cpu"}},
        "/users/ann/server",
        {"profile": "gpu"},
        400,
        "You may not use the profile 'gpu'. Choose another one.",
        id="forbidden-profile",
    ),
    pytest.param(
        {"quota_defaults": {"max_gpu_units": 0}},
        "/users/ann/server",
        {"profile": "gpu"},
        403,
        "Your quota allows no GPU servers. Start a CPU-only server instead.",
        id="no-gpu-units",
    ),
    pytest.param(
        {"quota_defaults": {"max_named_servers": 0}},
        "/users/ann/servers/extra",
        {"profile": "cpu"},
        403,
        "Your quota allows 0 named server(s) at once and you have 0. Stop one first.",
        id="no-named-servers",
    ),
]


@pytest.mark.parametrize("config, path, body, status, message", REFUSALS)
def test_a_refused_request_is_answered_before_anything_starts(
    docker_client, hub_factory, tmp_path, config, path, body, status, message
):
    hub, markers = _hub(hub_factory, tmp_path, config)
    hub.create_users(["ann"])
    since = time.time() - 1
    r = hub.api("POST", path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["message"] == message
    assert list(markers.iterdir()) == [], "pre_spawn_hook ran for a refused request"
    assert _created(docker_client, hub, since) == []
    assert not hub.containers(docker_client)
    assert not hub.user("ann").get("servers")
    assert "Traceback" not in hub.log_path.read_text(errors="replace")  # an answer, not a fault
    # the same user, asking for what is allowed, starts (the hook runs, a container is made)
    allowed = {"profile": "cpu"}
    r = hub.api("POST", "/users/ann/server", json=allowed)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("ann")
    assert [p.name for p in markers.iterdir()] == ["ann-default"]
    assert _created(docker_client, hub, since)


def test_the_budget_is_checked_before_the_hook(docker_client, hub_factory, tmp_path):
    hub, markers = _hub(hub_factory, tmp_path, {"quota_defaults": {"gpu_hours_per_period": 0}})
    hub.create_users(["bo"])
    r = hub.api("POST", "/users/bo/server", json={"profile": "gpu"})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "Your quota gives you no GPU time. Start a CPU-only server instead."
    assert list(markers.iterdir()) == []
    assert not hub.containers(docker_client)
