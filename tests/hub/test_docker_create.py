"""The unit reaches the container through DockerSpawner's own extension points.

``extra_create_kwargs`` and ``extra_host_config`` are callables that keep what the operator
configured and add the hub's labels, device request, limits and volumes; DockerSpawner's template
rendering (which it applies to both) gives the hub's own values back unchanged.
"""

from __future__ import annotations

import pytest
from harness import fake_gpus
from offline_spawner import offline_spawner

from gpuhub_spawner.core.labels import LABEL_HUB, LABEL_PROFILE, LABEL_UNIT, LABEL_USER
from gpuhub_spawner.hub.docker_create import WithGPU, literal
from gpuhub_spawner.hub.spawners import GPUDockerSpawner


def _spawner(user: str = "ann", **config) -> GPUDockerSpawner:
    settings = {"gpu_inventory": fake_gpus(1, "dc"), "gpu_discovery": "static", "gpu_hub_id": "dc-hub",
                "usage_db_url": "", "tutorials_source": "", **config}
    return offline_spawner(GPUDockerSpawner, user, **settings)


async def _create_args(spawner: GPUDockerSpawner) -> tuple[dict, dict]:
    """What DockerSpawner.create_object merges in: both callables, rendered as it renders them."""
    create = spawner._render_templates(await spawner.extra_create_kwargs(spawner))
    host = spawner._render_templates(await spawner.extra_host_config(spawner))
    return create, host


@pytest.mark.parametrize("user", ["ann", "a{0}b", "x{username}"])
async def test_labels_and_device_request_survive_template_rendering(user):
    spawner = _spawner(user)
    unit = next(iter(spawner.gpu_inventory_resolved.units))
    spawner.gpu_unit_id, spawner.gpu_profile_slug = unit.id, "gpu"
    create, host = await _create_args(spawner)
    labels = create["labels"]
    assert labels[LABEL_USER] == user and labels[LABEL_HUB] == "dc-hub" and labels[LABEL_PROFILE] == "gpu"
    assert labels[LABEL_UNIT] == unit.id
    [request] = host["device_requests"]
    assert request["DeviceIDs"] == [unit.device_id] and request["Capabilities"] == [["gpu"]]
    assert "no-new-privileges" in host["security_opt"]
    assert host["mem_limit"] == host["memswap_limit"] and host["pids_limit"] > 0 and host["cpu_quota"] > 0


async def test_a_cpu_server_gets_no_device_and_the_operator_values_are_kept():
    spawner = _spawner(
        extra_create_kwargs={"labels": {"team": "{username}"}, "stop_signal": "SIGINT"},
        extra_host_config=lambda sp: {"pids_limit": 99, "security_opt": ["apparmor=x"]},
        mem_limit="1G",
    )
    assert isinstance(spawner.extra_create_kwargs, WithGPU)
    create, host = await _create_args(spawner)
    assert "device_requests" not in host and LABEL_UNIT not in create["labels"]
    assert create["stop_signal"] == "SIGINT" and create["labels"]["team"] == "ann"  # still a template
    assert host["pids_limit"] == 99 and host["security_opt"] == ["apparmor=x", "no-new-privileges"]
    assert "mem_limit" not in host and host["memswap_limit"] == 1024**3  # upstream sets mem_limit


def test_literal_doubles_every_brace():
    assert literal({"a{": ["}b", ("{c}",)], "n": 3}) == {"a{{": ["}}b", ("{{c}}",)], "n": 3}
