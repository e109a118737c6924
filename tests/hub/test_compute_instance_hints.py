"""A compute-instance MIG unit (``1c.3g.40gb``) shares its GPU instance's memory with the other
compute instances there, so its server gets the framework memory hints for its share (MPS does
not run on MIG), on one host and on a swarm; a memory-isolated MIG unit gets none."""

from __future__ import annotations

import pytest
from offline_spawner import offline_spawner

from gpuhub_spawner.core import mps
from gpuhub_spawner.core.cluster import mig_kind
from gpuhub_spawner.core.inventory import KIND_MIG, Profile, Unit
from gpuhub_spawner.core.mig_profiles import memory_sharers
from gpuhub_spawner.core.quotas import QuotaPolicy
from gpuhub_spawner.hub.admission import Choice
from gpuhub_spawner.hub.spawners import GPUDockerSpawner
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner

GI_MEMORY_MB = 40192


@pytest.mark.parametrize(
    ("profile", "sharers"),
    [("1c.3g.40gb", 3), ("2c.4g.40gb", 2), ("1c.7g.80gb", 7), ("3g.40gb", 1), ("1g.10gb+me", 1), ("bogus", 1)],
)
def test_memory_sharers(profile, sharers):
    assert memory_sharers(profile) == sharers


def _mig(profile: str) -> Unit:
    return Unit(id="MIG-ci", kind=KIND_MIG, pool=f"mig-{profile}", device_id="MIG-ci", gpu_uuid="GPU-x",
                memory_mb=GI_MEMORY_MB, mig_profile=profile)


def test_one_host_gives_a_compute_instance_its_share_and_an_isolated_instance_nothing():
    spawner = offline_spawner(GPUDockerSpawner, "ann")
    env = spawner.gpu_env(_mig("1c.3g.40gb"))
    share = mps.hint_limits(GI_MEMORY_MB, 3)
    assert env["GPUHUB_GPU_SHARED"] == "1" and env["GPUHUB_GPU_LIMIT"] == mps.ENFORCE_HINTS
    assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(share.memory_mb)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == f"{share.fraction:.3f}"
    isolated = spawner.gpu_env(_mig("3g.40gb"))
    assert not {"GPUHUB_GPU_SHARED", "XLA_PYTHON_CLIENT_MEM_FRACTION", "GPUHUB_GPU_MEMORY_LIMIT_MB"} & set(isolated)
    spawner.gpu_memory_hints = False
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in spawner.gpu_env(_mig("1c.3g.40gb"))


async def test_a_swarm_compute_instance_kind_gets_the_fraction_and_stays_void():
    spawner = offline_spawner(GPUSwarmSpawner, "ann", gpu_hub_id="ci-hints", usage_db_url="", tutorials_source="",
                              cmd=["start.sh"])
    choice = Choice(Profile("mig", "MIG", pool="mig"), QuotaPolicy())

    async def env_of(kind: str) -> dict[str, str]:
        create = await spawner.service_kwargs(choice, kind)
        return dict(e.split("=", 1) for e in create["task_template"]["ContainerSpec"]["Env"])

    shared = await env_of(mig_kind("1c.3g.40gb"))
    assert shared["NVIDIA_VISIBLE_DEVICES"] == "void"  # the runtime maps the unit, as for every named kind
    assert shared["XLA_PYTHON_CLIENT_MEM_FRACTION"] == f"{0.9 / 3:.3f}" and shared["GPUHUB_GPU_SHARED"] == "1"
    isolated = await env_of(mig_kind("3g.40gb"))
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in isolated and "GPUHUB_GPU_SHARED" not in isolated
