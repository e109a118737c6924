"""max_gpu_units holds when one user's servers ask for GPUs at the same moment.

The limit counts units held, units reserved and spawns waiting in line, in the same step as the
reservation (under the allocator's lock on one host, the gate's lock on a swarm): two named
servers started at once get one GPU and one clear 403, whether the pool is full or not.
"""

from __future__ import annotations

import asyncio

import pytest
from harness import fake_gpus

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.inventory import Inventory, units_from_gpus
from gpuhub_spawner.hub.allocator import Allocator, HeldRecord, NoUnitFree, OverLimit
from gpuhub_spawner.hub.swarmspawner import SwarmGate

GPU_A = "GPU-aaaaaaaa-0000-4000-8000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-4000-8000-000000000002"


def _inventory(n: int) -> Inventory:
    return Inventory(tuple(units_from_gpus([{"uuid": f"GPU-00000000-0000-4000-8000-{i:012d}"} for i in range(n)])))


class Engine:
    """The labelled containers an engine would list (with their user label)."""

    def __init__(self) -> None:
        self.records: list[HeldRecord] = []

    async def list_held(self) -> list[HeldRecord]:
        return list(self.records)


async def _try(alloc: Allocator, engine: Engine, holder: str, user: str, limit: int | None, wait: float = 0.0):
    try:
        async with alloc.reserve("gpu", holder, max_wait=wait, owner=user, max_units=limit) as unit:
            await asyncio.sleep(0.01)  # the create takes a while: the other spawn runs meanwhile
            engine.records.append(HeldRecord(holder, unit.id, "running", user=user))
        return unit
    except OverLimit as e:
        return e


# ---- single host: the allocator -----------------------------------------------------------


async def test_two_servers_at_once_with_free_units_get_one_unit():
    engine = Engine()
    alloc = Allocator(_inventory(3), engine.list_held)
    results = await asyncio.gather(*(_try(alloc, engine, f"hub-ann-{s}", "ann", 1) for s in ("a", "b")))
    refused = [r for r in results if isinstance(r, OverLimit)]
    assert len(refused) == 1, results
    assert (refused[0].limit, refused[0].held, refused[0].waiting) == (1, 1, 0)
    assert len(alloc.ledger.holders()) == 1
    # another user is not counted against ann
    assert not isinstance(await _try(alloc, engine, "hub-bob", "bob", 1), OverLimit)


async def test_two_servers_queued_at_once_the_second_is_refused_not_queued():
    engine = Engine()
    alloc = Allocator(_inventory(1), engine.list_held)
    await _try(alloc, engine, "hub-zed", "zed", None)  # the pool is full
    first = asyncio.create_task(_try(alloc, engine, "hub-ann-a", "ann", 1, wait=30))
    second = asyncio.create_task(_try(alloc, engine, "hub-ann-b", "ann", 1, wait=30))
    done, _ = await asyncio.wait({first, second}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    refused = [t.result() for t in done]
    assert len(refused) == 1 and isinstance(refused[0], OverLimit), refused
    assert refused[0].waiting == 1 and refused[0].held == 0
    assert alloc.queue_length("gpu") == 1
    engine.records.clear()
    await alloc.release("hub-zed")
    waiting, holder = (first, "hub-ann-a") if second in done else (second, "hub-ann-b")
    unit = await asyncio.wait_for(waiting, 5)
    assert not isinstance(unit, OverLimit)
    assert set(alloc.ledger.holders()) == {holder}


async def test_units_from_labels_count_and_a_gone_server_does_not():
    """After a hub restart the count comes from the containers' user labels; a server that
    vanished behind the hub's back is not counted (the engine is read before refusing)."""
    inventory = _inventory(2)
    engine = Engine()
    engine.records.append(HeldRecord("hub-ann-old", inventory.units[0].id, "running", user="ann"))
    alloc = Allocator(inventory, engine.list_held)
    refused = await _try(alloc, engine, "hub-ann-new", "ann", 1)
    assert isinstance(refused, OverLimit) and refused.held == 1
    engine.records.clear()  # the old server's container was removed by someone else
    assert not isinstance(await _try(alloc, engine, "hub-ann-new", "ann", 1), OverLimit)


# ---- swarm: the gate ---------------------------------------------------------------------


def _node(resources: list[str]) -> dict:
    generic = [{"NamedResourceSpec": {"Kind": k, "Value": v}} for k, v in (r.split("=", 1) for r in resources)]
    return {
        "ID": "n1",
        "Description": {"Hostname": "w-gpu", "Resources": {"GenericResources": generic}, "Engine": {"Labels": {}}},
        "Status": {"State": "ready", "Addr": "10.0.0.1"},
        "Spec": {"Availability": "active", "Role": "worker"},
    }


def _running(service: str, gpu: str) -> dict:
    return {
        "ServiceID": service, "NodeID": "n1", "DesiredState": "running", "Status": {"State": "running"},
        "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA_GPU", "Value": gpu}}],
        "Spec": {"Resources": {"Reservations": {"GenericResources": []}}},
    }


@pytest.mark.parametrize("full", [False, True], ids=["free-units", "pool-full"])
async def test_swarm_gate_two_servers_at_once_get_one_admission(full):
    nodes = [_node([f"NVIDIA_GPU={GPU_A}", f"NVIDIA_GPU={GPU_B}"])]
    tasks = [_running("s-zed", GPU_A), _running("s-yan", GPU_B)] if full else []
    gate = SwarmGate()

    async def read_view(max_age: float = 0.5) -> ClusterView:
        return ClusterView.read(nodes, tasks, {"s-zed": "hub-zed", "s-yan": "hub-yan"})

    async def admit(holder: str):
        try:
            return await gate.admit("gpu", holder, read_view, 30 if full else 0, owner="ann", max_units=1)
        except OverLimit as e:
            return e

    first = asyncio.create_task(admit("hub-ann-a"))
    second = asyncio.create_task(admit("hub-ann-b"))
    done, _ = await asyncio.wait({first, second}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    if not full:
        await asyncio.wait({first, second}, timeout=5)
        done = {first, second}
    results = [t.result() for t in done]
    refused = [r for r in results if isinstance(r, OverLimit)]
    assert len(refused) == 1, results
    assert refused[0].waiting == (1 if full else 0) and refused[0].held == (0 if full else 1)
    if full:
        waiting = first if second in done else second
        assert gate.queue_length("gpu") == 1
        tasks.pop()  # yan's server ended: the waiting one is admitted
        gate.wake()
        assert await asyncio.wait_for(waiting, 5) == "NVIDIA_GPU"


async def test_swarm_gate_counts_live_services_of_the_user():
    nodes = [_node([f"NVIDIA_GPU={GPU_A}", f"NVIDIA_GPU={GPU_B}"])]
    tasks = [_running("s-ann", GPU_A)]
    gate = SwarmGate()
    gate.line.owners["hub-ann-old"] = "ann"  # what cluster_view reads from the service's labels

    async def read_view(max_age: float = 0.5) -> ClusterView:
        return ClusterView.read(nodes, tasks, {"s-ann": "hub-ann-old"})

    with pytest.raises(OverLimit):
        await gate.admit("gpu", "hub-ann-new", read_view, 0, owner="ann", max_units=1)
    assert await gate.admit("gpu", "hub-ann-new", read_view, 0, owner="ann", max_units=2) == "NVIDIA_GPU"
    tasks.clear()  # the old server ended: a fresh read before refusing sees it gone
    gate.settled("hub-ann-new")
    assert await gate.admit("gpu", "hub-ann-2", read_view, 0, owner="ann", max_units=1) == "NVIDIA_GPU"


# ---- a real hub, proxy and Docker engine -------------------------------------------------


QUOTA_403 = "Your quota allows 1 GPU unit at once"


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.parametrize("full", [False, True], ids=["free-units", "pool-full"])
def test_two_named_servers_at_once_one_gpu_one_403(docker_client, hub_factory, full):
    hub = hub_factory(
        {
            "gpu_inventory": fake_gpus(1 if full else 3, "race" + ("f" if full else "n")),
            "quota_defaults": {"max_gpu_units": 1},
            "gpu_queue_max_wait": 60,
        },
        extra="c.JupyterHub.allow_named_servers = True\n",
    )
    hub.create_users(["xena", "zed"])
    if full:
        assert hub.spawn("zed", {"profile": "gpu"}).status_code in (201, 202)
        hub.wait_ready("zed")

    accepted, refused, message = hub.race_two_named_gpu_servers("xena", timeout=90)
    if full:
        assert message.startswith(QUOTA_403), message  # the other one is waiting in line
        assert "another of your servers is already holding or waiting in line" in message
    else:
        assert message == (
            "You already hold 1 GPU unit, the most your quota allows. Stop another GPU server first, "
            "or start a CPU-only server."
        ), message
    assert "Traceback" not in message and "GPU-" not in message
    if full:
        hub.stop_server("zed")
    hub.wait_ready("xena", timeout=120, server_name=accepted)
    mine = [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == "xena"]
    assert [c.labels["org.gpuhub.server"] for c in mine] == [accepted]
    assert refused not in hub.user("xena").get("servers", {})


async def test_swarm_gate_a_read_begun_before_swarm_assigned_the_unit_does_not_hand_it_out_again():
    nodes = [_node([f"NVIDIA_GPU={GPU_A}"])]  # one unit
    tasks: list[dict] = []
    names: dict[str, str] = {}
    gate = SwarmGate()

    async def read() -> ClusterView:
        return ClusterView.read(nodes, list(tasks), dict(names))

    async def fresh(max_age: float = 0.5) -> ClusterView:
        return await gate.shared_view(read, 0.0)

    assert await gate.admit("gpu", "hub-ann", fresh, 0, owner="ann") == "NVIDIA_GPU"
    names["s-ann"] = "hub-ann"
    tasks.append({"ServiceID": "s-ann", "NodeID": "", "DesiredState": "running", "Status": {"State": "pending"},
                  "Spec": {"Resources": {"Reservations": {"GenericResources": []}}}})
    stale = await read()  # begun while ann's task waited for swarm to assign it
    tasks[0] = _running("s-ann", GPU_A)  # swarm gives ann the unit (the spawner notes it)
    gate.learn(stale)  # ...and the read begun before lands after it

    async def stale_view(max_age: float = 0.5) -> ClusterView:
        return stale

    with pytest.raises(NoUnitFree):  # ann's unit still counts: not handed to bob
        await gate.admit("gpu", "hub-bob", stale_view, 0, owner="bob")
    assert "hub-ann" in gate.inflight
    with pytest.raises(NoUnitFree):  # a read showing ann's unit held: ann no longer in flight
        await gate.admit("gpu", "hub-bob", fresh, 0, owner="bob")
    assert "hub-ann" not in gate.inflight
