"""Quotas from JupyterHub group properties, enforced at spawn by a real hub."""

from __future__ import annotations

import time

import pytest
from harness import container_of, fake_gpus, render_form

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def _group(hub, name: str, users: list[str], properties: dict) -> None:
    assert hub.api("POST", f"/groups/{name}").status_code in (201, 409)
    assert hub.api("POST", f"/groups/{name}/users", json={"users": users}).ok
    r = hub.api("PUT", f"/groups/{name}/properties", json=properties)
    assert r.ok, r.text


def test_group_quota_applies_on_the_next_spawn_without_restart(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(2, "qa")})
    hub.create_users(["wes"])
    _group(hub, "cpu-only", ["wes"], {"allowed_profiles": "cpu"})

    form = render_form(hub, "wes")
    assert 'value="cpu"' in form and 'value="gpu"' not in form  # the form offers only what is allowed
    r = hub.spawn("wes", {"profile": "gpu"})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "You may not use the profile 'gpu'. Choose another one."
    assert not hub.containers(docker_client)
    assert hub.spawn("wes", {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready("wes")
    hub.stop_server("wes")

    # the admin widens the group in the admin panel (group properties): no restart needed
    _group(hub, "cpu-only", ["wes"], {"allowed_profiles": "cpu,gpu"})
    assert hub.spawn("wes", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("wes")
    assert container_of(docker_client, hub, "wes").labels["org.gpuhub.profile"] == "gpu"


def test_max_gpu_units_across_named_servers(docker_client, hub_factory):
    hub = hub_factory(
        {"gpu_inventory": fake_gpus(3, "qb"), "quota_defaults": {"max_gpu_units": 1, "cpu_limit": 0.5}},
        extra="c.JupyterHub.allow_named_servers = True\n",
    )
    hub.create_users(["xena"])
    assert hub.spawn("xena", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("xena")

    r = hub.api("POST", "/users/xena/servers/second", json={"profile": "gpu"})
    assert r.status_code == 403, r.text
    assert "You already hold 1 GPU unit, the most your quota allows" in r.json()["message"]
    # a CPU-only server is still allowed, with the quota's CPU limit
    r = hub.api("POST", "/users/xena/servers/second", json={"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    # a group can raise the limit for its members
    _group(hub, "big", ["xena"], {"max_gpu_units": "2"})
    r = hub.api("POST", "/users/xena/servers/third", json={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    cpu = [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.server") == "second"]
    assert len(cpu) == 1 and cpu[0].attrs["HostConfig"]["CpuQuota"] == 50_000


def test_unreadable_group_quota_is_a_clear_error(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "qc")})
    hub.create_users(["yuri"])
    _group(hub, "broken", ["yuri"], {"max_gpu_units": "two"})
    r = hub.spawn("yuri", {"profile": "gpu"})
    assert r.status_code == 500
    assert r.json()["message"] == "Your quota settings cannot be read, so no server can start. Tell the hub's admin."
    assert "max_gpu_units: 'two' is not a whole number" in hub.log_tail(200)


def test_gpu_hour_budget_from_the_ledger(docker_client, hub_factory):
    # a budget of about one second of GPU time per week: used up by the first server
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "qd"), "quota_defaults": {"gpu_hours_per_period": 0.0003}})
    hub.create_users(["zoe"])
    assert hub.spawn("zoe", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("zoe")
    time.sleep(2)
    hub.stop_server("zoe")

    r = hub.spawn("zoe", {"profile": "gpu"})
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert "GPU-hours for this week; it resets on Monday" in message and "CPU-only server" in message
    form = render_form(hub, "zoe")
    assert "GPU time left this week: 0.0 h of 0.0003 h." in form
    assert hub.spawn("zoe", {"profile": "cpu"}).status_code in (201, 202)

    # the ledger (sqlite in the hub's data dir) survives a hub restart: still out of GPU time
    hub.wait_ready("zoe")
    hub.stop()
    hub.start()
    hub.stop_server("zoe")
    r = hub.spawn("zoe", {"profile": "gpu"})
    assert r.status_code == 403 and "GPU-hours for this week" in r.json()["message"], r.text


def test_max_named_servers(docker_client, hub_factory):
    hub = hub_factory(
        {"gpu_inventory": fake_gpus(1, "qe"), "quota_defaults": {"max_named_servers": 1}},
        extra="c.JupyterHub.allow_named_servers = True\n",
    )
    hub.create_users(["ivan"])
    r = hub.api("POST", "/users/ivan/servers/one", json={"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    r = hub.api("POST", "/users/ivan/servers/two", json={"profile": "cpu"})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "Your quota allows 1 named server(s) at once and you have 1. Stop one first."
    # the default server is not a named one
    assert hub.spawn("ivan", {"profile": "cpu"}).status_code in (201, 202)
