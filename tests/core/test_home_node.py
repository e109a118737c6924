"""core/home_node.py: where a user's next server goes, given the node holding their volumes."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core import home_node
from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.home_node import ANYWHERE, ASK, FREE, NFS, PLACE_HOME, WAIT, decide
from gpuhub_spawner.core.volumes import VolumePlan, build_mounts

PATHS = ["/home/jovyan/scratch", "/home/jovyan/my-tutorials"]
MIG = "mig-1g.10gb"


def _node(host: str, migs: int, state: str = "ready", availability: str = "active", shared: int = 0) -> dict:
    resources = [{"NamedResourceSpec": {"Kind": "NVIDIA_MIG_1G_10GB", "Value": f"MIG-{host}-{i}"}} for i in range(migs)]
    if shared:
        resources.append({"DiscreteResourceSpec": {"Kind": f"NVIDIA_SHARED_{host.upper().replace('-', '')}", "Value": shared}})
    return {
        "ID": f"id-{host}",
        "Description": {"Hostname": host, "Resources": {"GenericResources": resources}},
        "Status": {"State": state, "Addr": "10.0.0.1"},
        "Spec": {"Availability": availability, "Role": "worker"},
    }


def _holding(host: str, unit: str, name: str) -> dict:
    return {
        "ServiceID": name, "NodeID": f"id-{host}", "Status": {"State": "running"},
        "AssignedGenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA_MIG_1G_10GB", "Value": unit}}],
    }


def _view(*nodes: dict, tasks: tuple = ()) -> ClusterView:
    return ClusterView.read(list(nodes), list(tasks))


def test_no_home_yet_goes_anywhere_unconstrained():
    placed = decide("", _view(_node("gpu-1", 1)), MIG, "", PATHS)
    assert placed.action == FREE and placed.constraints == [] and placed.line_key(MIG) == MIG


def test_home_with_a_free_unit_is_chosen_even_when_another_node_has_more():
    view = _view(_node("gpu-1", 3), _node("gpu-2", 2), tasks=(_holding("gpu-2", "MIG-gpu-2-0", "s1"),))
    placed = decide("gpu-2", view, MIG, "", PATHS)
    assert placed.action == PLACE_HOME
    assert placed.constraints == ["node.hostname==gpu-2"]
    assert placed.line_key(MIG) == f"{MIG}@gpu-2"


def test_cpu_only_profile_goes_home_when_the_node_takes_servers():
    assert decide("gpu-2", _view(_node("gpu-2", 0)), None, "", PATHS).action == PLACE_HOME


def test_full_home_asks_with_both_choices_in_words():
    view = _view(_node("gpu-1", 3), _node("gpu-2", 1), tasks=(_holding("gpu-2", "MIG-gpu-2-0", "s1"),))
    placed = decide("gpu-2", view, MIG, "", PATHS)
    assert placed.action == ASK and placed.can_wait
    assert placed.message.startswith(
        "Your files (~/scratch, ~/my-tutorials) are on gpu-2, which has no free MIG 1g.10gb now. "
        "Wait in line for gpu-2, or start on another node with an empty ~/scratch (your files stay on gpu-2)."
    )
    assert '"placement": "wait" or "anywhere"' in placed.message
    # the user's choice settles it: wait in gpu-2's own line, or go anywhere (the files stay)
    wait = decide("gpu-2", view, MIG, WAIT, PATHS)
    assert wait.action == PLACE_HOME and wait.line_key(MIG) == f"{MIG}@gpu-2"
    anywhere = decide("gpu-2", view, MIG, ANYWHERE, PATHS)
    assert anywhere.action == FREE and anywhere.constraints == []
    assert "your files stay on gpu-2" in anywhere.message


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (_node("gpu-2", 2, availability="drain"), "which the hub's admin has drained"),
        (_node("gpu-2", 2, state="down"), "which is down now"),
        (None, "which has left the swarm"),
        (_node("gpu-2", 0), "which has no MIG 1g.10gb."),
    ],
)
def test_home_that_cannot_ever_serve_offers_only_anywhere(node, why):
    view = _view(_node("gpu-1", 2), *([node] if node else []))
    placed = decide("gpu-2", view, MIG, "", PATHS)
    assert placed.action == ASK and not placed.can_wait
    assert why in placed.message and "Wait in line" not in placed.message
    assert '"placement": "anywhere"' in placed.message
    # waiting for it cannot end: still asked; anywhere goes
    assert decide("gpu-2", view, MIG, WAIT, PATHS).action == ASK
    assert decide("gpu-2", view, MIG, ANYWHERE, PATHS).action == FREE


def test_drained_home_asks_for_cpu_only_too():
    placed = decide("gpu-2", _view(_node("gpu-2", 1, availability="drain")), None, "", PATHS)
    assert placed.action == ASK and "drained" in placed.message


def test_shared_slots_counted_on_the_home_node():
    view = _view(_node("gpu-1", 0, shared=2), _node("gpu-2", 0))
    assert home_node.units_on_node(view, "shared", "gpu-1") == (2, 2)
    assert home_node.kind_on_node(view, "shared", "gpu-1") == "NVIDIA_SHARED_GPU1"
    assert home_node.kind_on_node(view, "shared", "gpu-1", in_flight=2) is None
    assert decide("gpu-2", view, "shared", "", PATHS).action == ASK


def test_kind_on_node_counts_spawns_in_flight():
    view = _view(_node("gpu-1", 1), _node("gpu-2", 3))
    assert home_node.kind_on_node(view, MIG, "gpu-1") == "NVIDIA_MIG_1G_10GB"
    assert home_node.kind_on_node(view, MIG, "gpu-1", in_flight=1) is None
    assert home_node.kind_on_node(_view(_node("gpu-1", 1, availability="drain")), MIG, "gpu-1") is None


def test_placement_option_is_checked():
    assert home_node.parse_placement(None) == ""
    assert home_node.parse_placement("wait") == WAIT
    for bad in ("elsewhere", 3, ["wait"]):
        with pytest.raises(home_node.PlacementError, match="'placement' must be"):
            home_node.parse_placement(bad)


def test_form_notes_per_profile():
    view = _view(_node("gpu-2", 1), tasks=(_holding("gpu-2", "MIG-gpu-2-0", "s1"),))
    notes = home_node.form_notes("gpu-2", view, {"mig": MIG, "cpu": None}, PATHS)
    assert notes == {
        "mig": "on gpu-2, which has no free MIG 1g.10gb now: choose below what to do",
        "cpu": "on gpu-2, where this server starts",
    }


def test_nfs_volume_options_per_user_and_purpose():
    nfs = NFS("10.0.0.5", "/export/gpuhub/", "nfsvers=4.1,rw,addr=evil,soft")
    assert home_node.nfs_volume_options(nfs, "alice", "scratch") == {
        "type": "nfs",
        "o": "addr=10.0.0.5,rw,nfsvers=4.1,soft",
        "device": ":/export/gpuhub/alice/scratch",
    }


def test_with_nfs_sets_the_driver_on_the_users_volumes_only():
    plan = VolumePlan("alice", "tutorials", "/opt/t", "h-alice-scratch", "/home/jovyan/scratch",
                      "h-alice-my-tutorials", "/home/jovyan/my-tutorials")
    mounts = home_node.with_nfs(build_mounts(plan), NFS("nfs.example.org", "/export"), "alice")
    drivers = {m["Target"]: (m.get("VolumeOptions") or {}).get("DriverConfig") for m in mounts}
    assert drivers["/opt/t"] is None  # the shared tutorials stay as they are
    assert drivers["/home/jovyan/scratch"] == {"Name": "local", "Options": {
        "type": "nfs", "o": "addr=nfs.example.org,rw,nfsvers=4.1", "device": ":/export/alice/scratch"}}
    assert drivers["/home/jovyan/my-tutorials"]["Options"]["device"] == ":/export/alice/tutorials-copy"
    # its own name: a node-local volume from before NFS is not taken for it
    assert {m["Source"] for m in mounts} == {"tutorials", "h-alice-scratch-nfs", "h-alice-my-tutorials-nfs"}
    assert home_node.with_nfs(build_mounts(plan), None, "alice") == build_mounts(plan)


def test_storage_nfs_in_gpuhub_yaml():
    from gpuhub_spawner.core import config

    cfg = config.validate({"storage": {"nfs": {"server": "10.0.0.5", "export_root": "/export/gpuhub"}}})
    assert cfg.storage.nfs.model_dump() == {"server": "10.0.0.5", "export_root": "/export/gpuhub",
                                            "options": "nfsvers=4.1"}
    assert config.validate({}).storage.nfs is None
    with pytest.raises(config.ConfigFileError) as e:
        config.validate({"storage": {"nfs": {"server": "a b", "export_root": "export", "opts": "x"}}})
    text = "\n".join(e.value.lines)
    assert "storage.nfs.server: 'a b'" in text
    assert "storage.nfs.export_root: 'export' is not an absolute path" in text
    assert "storage.nfs.opts: unknown key" in text


def test_a_unit_being_released_on_the_home_node_counts_as_coming_free():
    stopping = {**_holding("gpu-2", "MIG-gpu-2-0", "old"), "DesiredState": "shutdown"}
    view = _view(_node("gpu-1", 3), _node("gpu-2", 1), tasks=(stopping,))
    assert home_node.releasing_on_node(view, MIG, "gpu-2") == 1
    assert decide("gpu-2", view, MIG, "", PATHS).action == PLACE_HOME
    # the gate still waits until swarm has really freed it
    assert home_node.kind_on_node(view, MIG, "gpu-2") is None
