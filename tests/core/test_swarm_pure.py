"""The pure swarm pieces: generic-resource names, the cluster view, and node set-up's edits."""

from __future__ import annotations

import json

import pytest

from gpuhub_spawner.core.cluster import (
    ClusterView,
    kind_of_pool,
    mig_kind,
    named_kinds,
    node_resources,
    pool_of_kind,
    shared_kind,
)
from gpuhub_spawner.core.inventory import units_from_gpus
from gpuhub_spawner.node.nodecli import SetupError, merge_daemon_config, parse_daemon_json, set_swarm_resource

GPU_A = "GPU-aaaaaaaa-0000-4000-8000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-4000-8000-000000000002"
GPU_S = "GPU-5a5a0000-0000-4000-8000-000000000003"
MIG_1 = "MIG-11111111-0000-4000-8000-000000000001"
MIG_2 = "MIG-22222222-0000-4000-8000-000000000002"


def test_kind_names_are_variable_names_and_map_back_to_pools():
    assert mig_kind("1g.10gb") == "NVIDIA_MIG_1G_10GB"
    assert mig_kind("1c.2g.20gb") == "NVIDIA_MIG_1C_2G_20GB"
    assert pool_of_kind("NVIDIA_MIG_1G_10GB") == "mig-1g.10gb" and kind_of_pool("mig-1g.10gb") == "NVIDIA_MIG_1G_10GB"
    assert pool_of_kind("NVIDIA_GPU") == "gpu" and kind_of_pool("gpu") == "NVIDIA_GPU"
    assert pool_of_kind(shared_kind(GPU_S)) == "shared" and kind_of_pool("shared") is None
    assert shared_kind(GPU_S) == "NVIDIA_SHARED_5A5A000000004000" and shared_kind(GPU_S).isidentifier()
    assert pool_of_kind("FPGA") is None


def test_node_resources_named_for_devices_discrete_for_shared_slots():
    units = units_from_gpus(
        [
            {"uuid": GPU_A},
            {"uuid": GPU_B, "mig": [{"uuid": MIG_1, "profile": "1g.10gb"}, {"uuid": MIG_2, "profile": "1g.10gb"}]},
        ],
        1,
    ) + units_from_gpus([{"uuid": GPU_S, "replicas": 3}], 1)
    resources, labels = node_resources(units)
    kind = shared_kind(GPU_S)
    assert resources == [
        f"NVIDIA_GPU={GPU_A}",
        f"NVIDIA_MIG_1G_10GB={MIG_1}",
        f"NVIDIA_MIG_1G_10GB={MIG_2}",
        f"{kind}=3",
    ]
    assert labels == {f"org.gpuhub.shared.{kind}": GPU_S}
    # the NVIDIA runtime reads the named kinds' variables only (a count is not a device)
    assert named_kinds(resources) == ["NVIDIA_GPU", "NVIDIA_MIG_1G_10GB"]


def _node(node_id, host, resources, state="ready", availability="active", labels=None):
    generic = []
    for entry in resources:
        kind, value = entry.split("=", 1)
        if value.isdigit():
            generic.append({"DiscreteResourceSpec": {"Kind": kind, "Value": int(value)}})
        else:
            generic.append({"NamedResourceSpec": {"Kind": kind, "Value": value}})
    return {
        "ID": node_id,
        "Description": {"Hostname": host, "Resources": {"GenericResources": generic},
                        "Engine": {"Labels": labels or {}}},
        "Status": {"State": state, "Addr": f"10.0.0.{node_id[-1]}"},
        "Spec": {"Availability": availability, "Role": "worker"},
    }


def _task(service, node, assigned, state="running", desired="running", requested=None):
    return {
        "ServiceID": service,
        "NodeID": node,
        "DesiredState": desired,
        "Status": {"State": state},
        "GenericResources": assigned,
        "Spec": {"Resources": {"Reservations": {"GenericResources": requested or []}}},
    }


def _named(kind, value):
    return {"NamedResourceSpec": {"Kind": kind, "Value": value}}


def _discrete(kind, n=1):
    return {"DiscreteResourceSpec": {"Kind": kind, "Value": n}}


KIND_S = shared_kind(GPU_S)
NODES = [
    _node("n1", "w-gpu", [f"NVIDIA_GPU={GPU_A}", f"NVIDIA_GPU={GPU_B}"]),
    _node("n2", "w-mig", [f"NVIDIA_MIG_1G_10GB={MIG_1}", f"NVIDIA_MIG_1G_10GB={MIG_2}"], availability="pause"),
    _node("n3", "w-shared", [f"{KIND_S}=2"], labels={f"org.gpuhub.shared.{KIND_S}": GPU_S}),
]


def test_cluster_view_counts_what_swarm_holds():
    tasks = [
        _task("s-ann", "n1", [_named("NVIDIA_GPU", GPU_A)]),
        # told to stop but still running: swarm frees its GPU only when it has ended
        _task("s-old", "n1", [_named("NVIDIA_GPU", GPU_B)], state="running", desired="shutdown"),
        _task("s-done", "n1", [_named("NVIDIA_GPU", GPU_B)], state="shutdown", desired="shutdown"),
        _task("s-mig", "n2", [_named("NVIDIA_MIG_1G_10GB", MIG_1)]),
        _task("s-cy", "n3", [_discrete(KIND_S)]),
        _task("s-wait", "", [], state="pending", requested=[_discrete("NVIDIA_GPU")]),
    ]
    view = ClusterView.read(NODES, tasks, {"s-ann": "hub-ann"})
    assert view.held == {GPU_A: "hub-ann", GPU_B: "s-old", MIG_1: "s-mig"}
    assert view.free_count("gpu") == 0
    # a cordoned (paused) node offers nothing new; its running server keeps its unit
    assert view.pool_size("mig-1g.10gb") == 0 and view.free_count("mig-1g.10gb") == 0
    assert view.pool_size("shared") == 2 and view.free_count("shared") == 1
    assert view.pending == {"gpu": 1}
    assert view.best_shared_kind() == KIND_S and view.best_shared_kind(exclude={KIND_S: 1}) is None
    assert view.unit(f"{GPU_S}/slot-1").node == "w-shared"
    assert view.node_of_unit(GPU_A).hostname == "w-gpu"
    assert view.placements["hub-ann"].unit_ids == (GPU_A,)
    # once the old task has ended, its GPU is free again
    tasks[1] = _task("s-old", "n1", [_named("NVIDIA_GPU", GPU_B)], state="shutdown", desired="shutdown")
    assert ClusterView.read(NODES, tasks).free_count("gpu") == 1


def test_a_down_node_offers_nothing():
    nodes = [_node("n1", "w-gpu", [f"NVIDIA_GPU={GPU_A}"], state="down")]
    view = ClusterView.read(nodes, [])
    assert view.pool_size("gpu") == 0 and view.free_count("gpu") == 0 and len(view.units) == 1


# ---- gpuhub node setup's file edits -----------------------------------------------------


def test_merge_keeps_every_other_key_and_replaces_only_our_entries():
    before = {
        "bip": "10.9.0.1/24",
        "log-driver": "journald",
        "node-generic-resources": ["FPGA=fpga-0", "NVIDIA_GPU=GPU-old"],
        "runtimes": {"kata": {"path": "/usr/bin/kata"}, "nvidia": {"path": "/old", "runtimeArgs": ["-x"]}},
        "labels": ["rack=3", "org.gpuhub.shared.NVIDIA_SHARED_OLD=GPU-old"],
    }
    merged = merge_daemon_config(before, [f"NVIDIA_GPU={GPU_A}", f"{KIND_S}=2"], {f"org.gpuhub.shared.{KIND_S}": GPU_S})
    assert merged["bip"] == "10.9.0.1/24" and merged["log-driver"] == "journald"
    assert merged["node-generic-resources"] == ["FPGA=fpga-0", f"NVIDIA_GPU={GPU_A}", f"{KIND_S}=2"]
    assert merged["runtimes"]["kata"] == {"path": "/usr/bin/kata"}
    assert merged["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "runtimeArgs": ["-x"]}
    assert merged["default-runtime"] == "nvidia"
    assert merged["labels"] == ["rack=3", f"org.gpuhub.shared.{KIND_S}={GPU_S}"]
    assert before["node-generic-resources"] == ["FPGA=fpga-0", "NVIDIA_GPU=GPU-old"]  # input untouched
    # idempotent
    assert merge_daemon_config(merged, [f"NVIDIA_GPU={GPU_A}", f"{KIND_S}=2"], {f"org.gpuhub.shared.{KIND_S}": GPU_S}) == merged


def test_malformed_daemon_json_names_the_line():
    text = '{\n  "bip": "10.9.0.1/24"\n  "debug": true\n}\n'
    with pytest.raises(SetupError) as e:
        parse_daemon_json(text, "/etc/docker/daemon.json")
    assert "line 3" in str(e.value) and '"debug": true' in str(e.value)
    with pytest.raises(SetupError, match="JSON object"):
        parse_daemon_json("[1, 2]", "daemon.json")
    assert parse_daemon_json("", "daemon.json") == {}
    assert parse_daemon_json(json.dumps({"a": 1}), "daemon.json") == {"a": 1}


def test_swarm_resource_line_is_set_once_at_top_level():
    stock = '#accept-nvidia-visible-devices-as-volume-mounts = false\n#swarm-resource = "DOCKER_RESOURCE_GPU"\n\n[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig"\n'
    out = set_swarm_resource(stock, ["NVIDIA_GPU", "NVIDIA_MIG_1G_10GB"])
    assert 'swarm-resource = "DOCKER_RESOURCE_NVIDIA_GPU,DOCKER_RESOURCE_NVIDIA_MIG_1G_10GB"\n' in out
    assert out.count("swarm-resource") == 1 and out.index("swarm-resource") < out.index("[nvidia-container-cli]")
    assert set_swarm_resource(out, ["NVIDIA_GPU", "NVIDIA_MIG_1G_10GB"]) == out
    fresh = set_swarm_resource('[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig"\n', ["NVIDIA_GPU"])
    assert fresh.startswith('swarm-resource = "DOCKER_RESOURCE_NVIDIA_GPU"\n[nvidia-container-cli]')


def test_the_gate_does_not_count_a_placed_spawn_twice():
    """A spawn let through stays 'in flight' until its spawner sees the task's unit; once swarm
    has assigned it, the view counts it and the gate must not count it again."""
    from gpuhub_spawner.hub.swarmspawner import SwarmGate

    gate = SwarmGate()
    two_gpus = [_node("n1", "w-gpu", [f"NVIDIA_GPU={GPU_A}", f"NVIDIA_GPU={GPU_B}"])]
    empty = ClusterView.read(two_gpus, [])
    gate.inflight["hub-ann"] = ("gpu", "NVIDIA_GPU")
    assert gate._free_kind(empty, "gpu") == "NVIDIA_GPU"  # 2 free, 1 in flight
    gate.inflight["hub-bob"] = ("gpu", "NVIDIA_GPU")
    assert gate._free_kind(empty, "gpu") is None  # 2 free, 2 in flight
    # swarm placed ann's task (the view holds GPU_A for her) before her spawner noticed
    placed = ClusterView.read(two_gpus, [_task("s-ann", "n1", [_named("NVIDIA_GPU", GPU_A)])], {"s-ann": "hub-ann"})
    assert placed.free_count("gpu") == 1
    assert gate._free_kind(placed, "gpu") is None  # bob's is the one left
    del gate.inflight["hub-bob"]
    assert gate._free_kind(placed, "gpu") == "NVIDIA_GPU"
    # shared slots: the same for a discrete kind
    shared = [_node("n3", "w-shared", [f"{KIND_S}=2"], labels={f"org.gpuhub.shared.{KIND_S}": GPU_S})]
    gate = SwarmGate()
    gate.inflight = {"hub-cy": ("shared", KIND_S), "hub-di": ("shared", KIND_S)}
    assert gate._free_kind(ClusterView.read(shared, []), "shared") is None
    view = ClusterView.read(shared, [_task("s-cy", "n3", [_discrete(KIND_S)])], {"s-cy": "hub-cy"})
    assert gate._free_kind(view, "shared") is None  # cy counted once (by swarm), di in flight
    del gate.inflight["hub-di"]
    assert gate._free_kind(view, "shared") == KIND_S
