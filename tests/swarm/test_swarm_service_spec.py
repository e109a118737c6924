"""The service GPUSwarmSpawner creates: upstream's spec and the operator's ``extra_*_spec``, with
the hub's additions over them (no engine needed: the arguments of ``create_service`` are read).

The operator's settings are kept where they do not touch what the hub guarantees; the GPU's
kind, the hub's labels, limits, no-new-privileges and "never restart elsewhere" always win.
"""

from __future__ import annotations

from offline_spawner import offline_spawner

from gpuhub_spawner.core.cluster import GPU_KIND
from gpuhub_spawner.core.inventory import Profile
from gpuhub_spawner.core.labels import LABEL_HUB, LABEL_POOL, LABEL_PROFILE, LABEL_SERVER, LABEL_USER
from gpuhub_spawner.core.quotas import QuotaPolicy
from gpuhub_spawner.hub.admission import Choice
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner

OPERATOR = {
    "extra_container_spec": {"env": {"NVIDIA_VISIBLE_DEVICES": "all", "COURSE": "ml101"}, "labels": {"team": "a"}},
    "extra_resources_spec": {"mem_reservation": 1 << 20},
    "extra_placement_spec": {"constraints": ["node.labels.course == ml101"]},
    "extra_task_spec": {"restart_policy": {"Condition": "any"}},
}


def _spawner(**config) -> GPUSwarmSpawner:
    settings = {"gpu_hub_id": "sw-hub", "usage_db_url": "", "tutorials_source": "", "cmd": ["start.sh"], **config}
    return offline_spawner(GPUSwarmSpawner, "ann", **settings)


def _env(container: dict) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in container["Env"])


async def test_a_gpu_service_requests_its_kind_with_the_operators_settings_kept():
    spawner = _spawner(**OPERATOR, extra_create_kwargs=lambda sp: {"labels": {"owner": sp.user.name}})
    choice = Choice(Profile("gpu", "Whole GPU", pool="gpu"), QuotaPolicy())
    create = await spawner.service_kwargs(choice, GPU_KIND)
    task = create["task_template"]
    container = task["ContainerSpec"]
    generic = task["Resources"]["Reservations"]["GenericResources"]
    assert generic == [{"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": 1}}]
    assert task["Resources"]["Reservations"]["MemoryBytes"] == 1 << 20  # the operator's reservation
    limits = task["Resources"]["Limits"]
    assert limits["MemoryBytes"] > 0 and limits["NanoCPUs"] > 0 and limits["Pids"] > 0
    assert task["Placement"]["Constraints"] == ["node.labels.course == ml101"]
    assert task["RestartPolicy"]["Condition"] == "none"  # never restarted elsewhere with its unit
    assert container["Privileges"]["NoNewPrivileges"] is True
    hub_labels = {LABEL_HUB: "sw-hub", LABEL_USER: "ann", LABEL_SERVER: "", LABEL_PROFILE: "gpu", LABEL_POOL: "gpu"}
    assert container["Labels"] == {"team": "a", **hub_labels}
    assert create["labels"] == {"owner": "ann", **hub_labels}
    env = _env(container)
    assert env["GPUHUB_GPU_KIND"] == GPU_KIND and env["COURSE"] == "ml101"


async def test_a_cpu_service_sees_no_gpu_whatever_the_operator_set():
    spawner = _spawner(**OPERATOR)
    choice = Choice(Profile("cpu", "CPU only"), QuotaPolicy())
    create = await spawner.service_kwargs(choice, "")
    task = create["task_template"]
    assert "GenericResources" not in task["Resources"].get("Reservations", {})
    env = _env(task["ContainerSpec"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["COURSE"] == "ml101"
    assert LABEL_POOL not in create["labels"] and create["labels"][LABEL_PROFILE] == "cpu"
