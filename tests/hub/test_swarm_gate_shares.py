"""Guaranteed shares and bursts at the swarm gate (rules: core/shares.py): what a read of the
swarm shows each group holding, by its services' labels, decides who is let through."""

from __future__ import annotations

import asyncio

import pytest

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.labels import ServerLabels
from gpuhub_spawner.core.shares import KEPT, PoolShares, Share
from gpuhub_spawner.hub.fairline import NoUnitFree
from gpuhub_spawner.hub.swarmgate import SwarmGate

GPUS = [f"GPU-00000000-0000-4000-8000-{i:012d}" for i in range(4)]
SHARES = {"course": Share(2, 3)}
COURSE, OUTSIDE = PoolShares(SHARES, "course"), PoolShares(SHARES, "")


class Swarm:
    """A FAKE swarm manager's answer: one node with four GPUs, and the services running on it."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # service name -> group its labels name

    async def read(self, max_age: float = 0.5) -> ClusterView:
        node = {
            "ID": "n1", "Status": {"State": "ready", "Addr": "10.0.0.1"},
            "Spec": {"Availability": "active", "Role": "worker"},
            "Description": {"Hostname": "w-gpu", "Engine": {"Labels": {}}, "Resources": {"GenericResources": [
                {"NamedResourceSpec": {"Kind": "NVIDIA_GPU", "Value": gpu}} for gpu in GPUS]}},
        }
        tasks = [{
            "ServiceID": name, "NodeID": "n1", "DesiredState": "running", "Status": {"State": "running"},
            "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA_GPU", "Value": GPUS[i]}}],
            "Spec": {"Resources": {"Reservations": {"GenericResources": []}}},
        } for i, name in enumerate(self.running)]
        view = ClusterView.read([node], tasks, {name: name for name in self.running})
        view.labels = {name: ServerLabels(user=name, pool="gpu", group=group) for name, group in self.running.items()}
        return view


async def through(gate: SwarmGate, swarm: Swarm, holder: str, share: PoolShares, wait: float = 0) -> str:
    """A spawn let through by the gate whose service then runs (the gate stops counting it as in flight)."""
    kind = await gate.admit("gpu", holder, swarm.read, wait, owner=holder, share=share)
    swarm.running[holder] = share.group
    gate.learn(await swarm.read())
    return kind


async def test_units_kept_for_an_unused_guarantee_are_let_through_only_for_members():
    gate, swarm = SwarmGate(), Swarm()
    await through(gate, swarm, "out0", OUTSIDE)
    await through(gate, swarm, "out1", OUTSIDE)
    with pytest.raises(NoUnitFree):  # two GPUs free, both kept for the course
        await gate.admit("gpu", "out2", swarm.read, 0, owner="out2", share=OUTSIDE)
    waiting = asyncio.ensure_future(through(gate, swarm, "out3", OUTSIDE, wait=30))
    await asyncio.sleep(0.1)
    assert gate.queue_length("gpu") == 1 and gate.line.held_back("gpu", "out3") == (KEPT, OUTSIDE)
    # a member is let through at once, past the outsider waiting in line
    assert await through(gate, swarm, "member0", COURSE) == "NVIDIA_GPU"
    assert gate.held_by_group(await swarm.read(), "gpu") == {"": 2, "course": 1}
    assert not waiting.done()
    del swarm.running["out0"]  # an outsider's server ends: the outsider in line goes
    gate.wake()
    assert await asyncio.wait_for(waiting, 5) == "NVIDIA_GPU"


async def test_a_spawn_let_through_counts_for_its_group_before_swarm_shows_it():
    gate, swarm = SwarmGate(), Swarm()
    await through(gate, swarm, "out0", OUTSIDE)
    # two members let through, their services not read yet: they use the course's guarantee
    await gate.admit("gpu", "member0", swarm.read, 0, owner="member0", share=COURSE)
    await gate.admit("gpu", "member1", swarm.read, 0, owner="member1", share=COURSE)
    assert gate.held_by_group(await swarm.read(), "gpu") == {"": 1, "course": 2}
    # so the last GPU may go to an outsider: no guarantee keeps it any more
    assert await gate.admit("gpu", "out1", swarm.read, 0, owner="out1", share=OUTSIDE) == "NVIDIA_GPU"
