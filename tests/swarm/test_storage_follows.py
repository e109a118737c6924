"""Storage that follows users across the swarm's nodes (core/home_node.py, hub/home.py), on the rig.

The pool ``mig-1g.10gb`` spans two nodes here: the rig's ``w-mig`` (3 units) and ``w-mig2`` (1
unit, added by this module).  A user whose files are on ``w-mig2`` gets it back even though
``w-mig`` has more free units; when ``w-mig2`` is full they are told at once and choose.
"""

from __future__ import annotations

import re
import time

import docker
import pytest
from harness import IMAGE, render_form
from swarm_rig import SwarmRig, fake_migs

from gpuhub_spawner.core.home_node import NFS, with_nfs
from gpuhub_spawner.core.volumes import VolumePlan, build_mounts

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

PROFILES = [
    {"slug": "mig", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None},
]
HOME = "w-mig2"
NOTE = "/home/jovyan/scratch/note.txt"


@pytest.fixture(scope="module")
def two_mig_nodes(rig: SwarmRig):
    """The rig plus ``w-mig2`` with one more unit of w-mig's pool; removed afterwards."""
    node = rig.start_node(HOME, 10, generic_resources=[f"NVIDIA_MIG_1G_10GB={u}" for u in fake_migs("b2", 1)])
    try:
        rig.join(node)
        rig.wait_nodes_ready([HOME])
        rig.load_image(IMAGE, [HOME])
        yield rig
    finally:
        rig.remove_node(HOME)
        client = rig.manager_client()
        for n in client.nodes.list():
            if n.attrs["Description"]["Hostname"] == HOME:
                client.api.remove_node(n.id, force=True)
        client.close()


def _availability(rig: SwarmRig, host: str, value: str) -> None:
    rig.update_node(host, availability=value)


def _server(rig: SwarmRig, hub, user: str) -> tuple[str, dict, docker.models.containers.Container]:
    """(node, service spec, container) of ``user``'s running server."""
    client = rig.manager_client()
    try:
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
        services = client.services.list(filters={"label": [f"org.gpuhub.hub={hub.hub_id}", f"org.gpuhub.user={user}"]})
        assert len(services) == 1, services
        task = next(t for t in services[0].tasks() if t["Status"]["State"] == "running")
        node = nodes[task["NodeID"]]
        container = rig.nodes[node].client().containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        return node, services[0].attrs["Spec"], container
    finally:
        client.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"


def _sh(container, cmd: str) -> str:
    result = container.exec_run(["sh", "-c", cmd])
    return result.output.decode().strip()


def _start(hub, user: str, options: dict) -> None:
    r = hub.spawn(user, options, timeout=120)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=120)


def _volume_file(rig: SwarmRig, node: str, hub, user: str) -> str:
    """``note.txt`` in ``user``'s scratch volume on ``node``, read from the node's disk."""
    client = rig.nodes[node].client()
    try:
        mountpoint = client.volumes.get(f"{hub.hub_id}-{user}-scratch").attrs["Mountpoint"]
    finally:
        client.close()
    return rig.nodes[node].sh(f"cat {mountpoint}/note.txt", check=False)[1].strip()


def test_files_follow_the_user_and_a_full_home_asks(two_mig_nodes, swarm_hub):
    rig = two_mig_nodes
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 60})
    hub.create_users(["alice", "bob"])

    # alice's first server: w-mig is drained, so it lands on w-mig2, which becomes her home
    _availability(rig, "w-mig", "drain")
    try:
        _start(hub, "alice", {"profile": "mig"})
        node, _spec, container = _server(rig, hub, "alice")
        assert node == HOME
        assert _sh(container, f"echo kept > {NOTE} && cat {NOTE}") == "kept"
        hub.stop_server("alice")
        # bob has no home yet: he gets w-mig2 the same way, and stops
        _start(hub, "bob", {"profile": "mig"})
        assert _server(rig, hub, "bob")[0] == HOME
        hub.stop_server("bob")
    finally:
        _availability(rig, "w-mig", "active")

    # the hub restarts: it knows the home nodes from its database (the spawners' state)
    hub.stop()
    hub.start()
    # w-mig has 3 free units, w-mig2 1: alice's server still goes home, and her file is there
    _start(hub, "alice", {"profile": "mig"})
    node, spec, container = _server(rig, hub, "alice")
    assert node == HOME
    assert f"node.hostname=={HOME}" in spec["TaskTemplate"]["Placement"]["Constraints"]
    assert _sh(container, f"cat {NOTE}") == "kept"
    hub.stop_server("alice")

    # bob takes w-mig2's only unit: alice is told at once, and nothing of hers starts
    _start(hub, "bob", {"profile": "mig"})
    assert _server(rig, hub, "bob")[0] == HOME
    started = time.monotonic()
    r = hub.spawn("alice", {"profile": "mig"})
    assert time.monotonic() - started < 5
    assert r.status_code == 503, r.text
    assert r.json()["message"].startswith(
        f"Your files (~/scratch, ~/my-tutorials) are on {HOME}, which has no free MIG 1g.10gb now. "
        f"Wait in line for {HOME}, or start on another node with an empty ~/scratch (your files stay on {HOME})."
    ), r.text
    assert not hub.user("alice")["servers"]

    # the spawn form says where her files are and offers the choice
    html = render_form(hub, "alice")
    assert f"Your files (~/scratch, ~/my-tutorials) are on node <strong>{HOME}</strong>" in html
    assert f"on {HOME}, which has no free MIG 1g.10gb now: choose below what to do" in html
    for value in ("", "wait", "anywhere"):
        assert re.search(rf'<input type="radio" name="placement" value="{value}"', html), value
    assert "Wait in line for w-mig2" in html and "Start on another node with an empty ~/scratch" in html

    # "wait": alice queues for w-mig2 only (w-mig has free units) and gets it when bob stops
    r = hub.spawn("alice", {"profile": "mig", "placement": "wait"})
    assert r.status_code == 202, r.text
    events = hub.api("GET", "/users/alice/server/progress", stream=True, timeout=30)
    with events:
        for line in events.iter_lines(decode_unicode=True):
            if f"in line for {HOME}" in (line or ""):
                break
    assert not any(s.attrs["Spec"]["Labels"].get("org.gpuhub.user") == "alice"
                   for s in rig.manager_client().services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"}))
    hub.stop_server("bob")
    hub.wait_ready("alice", timeout=120)
    node, _spec, container = _server(rig, hub, "alice")
    assert node == HOME and _sh(container, f"cat {NOTE}") == "kept"
    hub.stop_server("alice")

    # "anywhere": with w-mig2 full again, alice starts on w-mig with an empty scratch; the old
    # file stays on w-mig2, and her home moves to w-mig
    _start(hub, "bob", {"profile": "mig"})
    _start(hub, "alice", {"profile": "mig", "placement": "anywhere"})
    node, spec, container = _server(rig, hub, "alice")
    assert node == "w-mig"
    assert not any("node.hostname" in c for c in spec["TaskTemplate"].get("Placement", {}).get("Constraints") or [])
    assert _sh(container, f"ls {NOTE} 2>&1 || true").endswith("No such file or directory")
    assert _volume_file(rig, HOME, hub, "alice") == "kept"
    hub.stop_server("alice")
    html = render_form(hub, "alice")
    assert "are on node <strong>w-mig</strong>" in html and "on w-mig, where this server starts" in html

    # her home node is drained: she is told, and only "anywhere" is offered
    _availability(rig, "w-mig", "drain")
    try:
        _wait(lambda: "admin has drained: choose below" in render_form(hub, "alice"),
              10, "the drained home node in alice's form")
        r = hub.spawn("alice", {"profile": "cpu", "placement": "wait"})
        assert r.status_code == 503, r.text
        message = r.json()["message"]
        assert message.startswith("Your files (~/scratch, ~/my-tutorials) are on w-mig, which the hub's admin has drained.")
        assert '"placement": "anywhere"' in message and "Wait in line" not in message
    finally:
        _availability(rig, "w-mig", "active")


def test_nfs_volumes_carry_the_driver_options(rig, swarm_hub):
    """With ``storage.nfs`` the service's volumes carry Docker's local-driver NFS options, and a
    node's engine creates such a volume.  This kernel has no NFS client, so nothing is mounted:
    the server is kept from any node by a placement constraint no node meets."""
    nfs = {"server": "192.0.2.10", "export_root": "/export/gpuhub", "options": "nfsvers=4.1,soft"}
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 60}, extra=(
        f"c.GPUSwarmSpawner.gpu_storage_nfs = {nfs!r}\n"
        'c.GPUSwarmSpawner.extra_placement_spec = {"constraints": ["node.labels.gpuhub-nfs-test==yes"]}\n'
    ))
    hub.create_users(["nfsuser"])
    r = hub.spawn("nfsuser", {"profile": "cpu"})
    assert r.status_code == 202, r.text
    client = rig.manager_client()
    try:
        deadline = time.monotonic() + 20
        while not (services := client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"})):
            assert time.monotonic() < deadline, "no service"
        spec = services[0].attrs["Spec"]["TaskTemplate"]
    finally:
        client.close()
    mounts = {m["Target"]: m for m in spec["ContainerSpec"]["Mounts"]}
    assert mounts["/home/jovyan/scratch"]["Source"] == f"{hub.hub_id}-nfsuser-scratch-nfs"
    scratch = mounts["/home/jovyan/scratch"]["VolumeOptions"]["DriverConfig"]
    assert scratch == {"Name": "local", "Options": {
        "type": "nfs", "o": "addr=192.0.2.10,rw,nfsvers=4.1,soft", "device": ":/export/gpuhub/nfsuser/scratch"}}
    copy = mounts["/home/jovyan/my-tutorials"]["VolumeOptions"]["DriverConfig"]["Options"]
    assert copy["device"] == ":/export/gpuhub/nfsuser/tutorials-copy"
    assert spec["Placement"]["Constraints"] == ["node.labels.gpuhub-nfs-test==yes"]  # no home node

    # what a node does at the task's start: create the volume with those options (no mount yet)
    plan = VolumePlan("nfsuser", "", "", f"{hub.hub_id}-nfsuser-scratch", "/s", "", "")
    (mount,) = with_nfs(build_mounts(plan), NFS(**nfs), "nfsuser")
    node = rig.nodes["w-gpu"].client()
    try:
        driver = mount["VolumeOptions"]["DriverConfig"]
        volume = node.volumes.create(mount["Source"], driver=driver["Name"], driver_opts=driver["Options"])
        try:
            assert volume.name == f"{hub.hub_id}-nfsuser-scratch-nfs"
            assert volume.attrs["Driver"] == "local" and volume.attrs["Options"] == scratch["Options"]
        finally:
            volume.remove()
    finally:
        node.close()
