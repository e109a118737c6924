"""What the hub's lines want back, as the culler reads it (gpuhub_spawner/hub/lines.py), from a
real single-host allocator with guaranteed shares and a reservation's claim."""

from __future__ import annotations

import asyncio
import time

from allocator_fakes import FakeEngine, make_inventory, spawn, until

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.labels import ServerLabels
from gpuhub_spawner.core.shares import PoolShares, Share
from gpuhub_spawner.hub.allocator import Allocator
from gpuhub_spawner.hub.lines import allocator_wants, gate_wants, hub_wants
from gpuhub_spawner.hub.swarmgate import SwarmGate

# 2 whole GPUs: the lab is guaranteed 1; the course's reservation was lent out (a claim of 1)
SHARES = {"lab": Share(1), "course": Share(0, None, 1)}
LAB, COURSE, OUTSIDE = (PoolShares(SHARES, g) for g in ("lab", "course", ""))


class _State:
    def __init__(self, alloc: Allocator):
        self.allocators, self.gates = {"engine": alloc}, {}


async def test_a_member_within_a_guarantee_waiting_wants_the_outsiders_units_back():
    engine = FakeEngine()
    alloc = Allocator(make_inventory(whole=2), engine.list_held, engine.remove, resync_interval=0.05)
    # ann and bob took both units before the shares were set (or the reservation's window began)
    await spawn(alloc, engine, "ann-server", "gpu", owner="ann")
    await spawn(alloc, engine, "bob-server", "gpu", owner="bob")
    assert allocator_wants(alloc, time.time()) == {}  # nobody waits
    # an outsider waiting wants nothing back: it is entitled to nothing
    out = asyncio.ensure_future(spawn(alloc, engine, "cat-server", "gpu", share=OUTSIDE, owner="cat", max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 1)
    assert allocator_wants(alloc, time.time()) == {}
    # a lab member (guarantee) and a course member (reservation) wait: both want a unit back
    lab = asyncio.ensure_future(spawn(alloc, engine, "lea-server", "gpu", share=LAB, owner="lea", max_wait=30))
    course = asyncio.ensure_future(spawn(alloc, engine, "cole-server", "gpu", share=COURSE, owner="cole",
                                         max_wait=30))
    await until(lambda: alloc.queue_length("gpu") == 3)
    later = time.time() + 100
    wants = hub_wants([_State(alloc)], now=later)["pools"]
    assert wants["gpu"]["units"] == 2 and wants["gpu"]["over"] == ["ann", "bob"]
    (waited,) = wants["gpu"]["reserved_waits"]  # the course member's wait alone: a reservation
    assert 99 <= waited <= 105
    # ann's server stops: the freed unit goes to a member within its share, and the line wants one less
    engine.vanish("ann-server")
    await alloc.release("ann-server")
    await until(lambda: alloc.queue_length("gpu") == 2)
    assert allocator_wants(alloc, time.time())["gpu"]["units"] == 1
    for task in (out, lab, course):
        task.cancel()
    await asyncio.gather(out, lab, course, return_exceptions=True)


def _two_node_view(running: dict[str, str]) -> ClusterView:
    """A FAKE swarm read: w-gpu and w-b with one GPU each; ``running``: service -> its node's hostname."""
    gpus = {"w-gpu": "GPU-00000000-0000-4000-8000-000000000001", "w-b": "GPU-00000000-0000-4000-8000-000000000002"}
    nodes = [{"ID": host, "Status": {"State": "ready", "Addr": "10.0.0.1"},
              "Spec": {"Availability": "active", "Role": "worker"},
              "Description": {"Hostname": host, "Engine": {"Labels": {}}, "Resources": {"GenericResources": [
                  {"NamedResourceSpec": {"Kind": "NVIDIA_GPU", "Value": gpu}}]}}} for host, gpu in gpus.items()]
    tasks = [{"ServiceID": name, "NodeID": host, "DesiredState": "running", "Status": {"State": "running"},
              "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA_GPU", "Value": gpus[host]}}],
              "Spec": {"Resources": {"Reservations": {"GenericResources": []}}}} for name, host in running.items()]
    view = ClusterView.read(nodes, tasks, {name: name for name in running})
    view.labels = {name: ServerLabels(user=name, pool="gpu") for name in running}
    return view


async def test_on_a_swarm_a_member_waiting_for_their_home_node_wants_a_unit_back_there():
    gate = SwarmGate()
    gate.learn(_two_node_view({"ola": "w-gpu", "oto": "w-b"}))  # outsiders on both nodes
    course = PoolShares({"course": Share(0, None, 1)}, "course")
    gate.line.join("gpu@w-gpu", "cole-server", owner="cole", share=course)  # cole's files are on w-gpu
    want = gate_wants(gate, time.time() + 60)["gpu"]
    assert want["units"] == 1 and want["over"] == ["ola"] and 59 <= want["reserved_waits"][0] <= 61
    gate.line.join("gpu", "cara-server", owner="cara", share=course)  # cara waits for any node
    assert gate_wants(gate, time.time())["gpu"]["over"] == ["ola", "oto"]
    for ticket in [t for line in gate.line.tickets().values() for t in line]:
        ticket.granted.cancel()
