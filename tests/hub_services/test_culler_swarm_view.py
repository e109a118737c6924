"""The culler's view of a swarm (hub_services/culler/swarm.py, pure): where each of this hub's
servers runs and which node agent to ask; which agents give GPU activity.  The API dicts are
shaped as the manager's engine answers ``nodes``, ``services`` and ``tasks``."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core.config import validate
from gpuhub_spawner.deploy.stack import render
from hub_services.culler import core
from hub_services.culler.signals import AgentView, ContainerInfo
from hub_services.culler.swarm import swarm_view


def node(nid: str, addr: str, gpu: bool = True, state: str = "ready") -> dict:
    return {"ID": nid, "Description": {"Hostname": f"host-{nid}"}, "Status": {"State": state, "Addr": addr},
            "Spec": {"Labels": {"gpuhub.gpu": "true"} if gpu else {}}}


def service(sid: str, user: str, hub: str = "h1") -> dict:
    return {"ID": sid, "Spec": {"Labels": {"org.gpuhub.hub": hub, "org.gpuhub.user": user,
                                           "org.gpuhub.server": "", "org.gpuhub.profile": "gpu"}}}


def task(sid: str, nid: str, cid: str = "c" * 64, state: str = "running", desired: str = "running") -> dict:
    return {"ServiceID": sid, "NodeID": nid, "DesiredState": desired,
            "Status": {"State": state, "ContainerStatus": {"ContainerID": cid}}}


NODES = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("m", "10.0.0.9", gpu=False),
         node("n3", "10.0.0.3", state="down")]


def test_each_running_server_is_reached_through_its_nodes_agent():
    view = swarm_view(NODES, [service("s1", "alice"), service("s2", "bob")],
                      [task("s1", "n1", "a" * 64), task("s2", "n2", "b" * 64),
                       task("s2", "n1", "d" * 64, state="shutdown", desired="shutdown")], "h1")
    assert {k: (i.id[:1], i.agent) for k, i in view.servers.items()} == {
        ("alice", ""): ("a", "http://10.0.0.1:9469"),
        ("bob", ""): ("b", "http://10.0.0.2:9469"),
    }


@pytest.mark.parametrize(
    "services,tasks",
    [
        pytest.param([service("s1", "alice", hub="other")], [task("s1", "n1")], id="another-hubs-service"),
        pytest.param([{"ID": "s1", "Spec": {"Labels": {"org.gpuhub.hub": "h1"}}}], [task("s1", "n1")],
                     id="not-a-server"),
        pytest.param([service("s1", "alice")], [task("s1", "n1", state="starting")], id="not-running-yet"),
        pytest.param([service("s1", "alice")], [task("s1", "n1", cid="")], id="no-container-yet"),
        pytest.param([service("s1", "alice")], [task("s1", "gone")], id="unknown-node"),
    ],
)
def test_what_is_not_a_running_server_of_this_hub_is_left_out(services, tasks):
    assert swarm_view(NODES, services, tasks, "h1").servers == {}


def test_gpu_agents_are_the_ready_nodes_labelled_gpu_and_the_url_is_configurable():
    assert swarm_view(NODES, [], [], "h1").gpu_agents == ["http://10.0.0.1:9469", "http://10.0.0.2:9469"]
    view = swarm_view(NODES, [], [], "h1", agent_url="https://{hostname}:9500")
    assert view.gpu_agents == ["https://host-n1:9500", "https://host-n2:9500"]


def test_the_stacks_hub_is_on_the_edge_network_to_reach_the_agents_and_gets_their_token():
    cfg = validate({"deploy": {"public_url": "https://workshop.example.org", "tls": {"mode": "internal"}}})
    doc = render(cfg)
    hub = doc["services"]["hub"]
    assert "edge" in hub["networks"] and doc["networks"]["edge"].get("internal") is not True
    assert {"source": "agent_token", "target": "agent_token"} in hub["secrets"]
    # no user server network besides the one it had: the users' network stays the hub's alias only
    assert hub["networks"]["users"] == {"aliases": ["gpuhub-hub"]}


NODE_1, NODE_2 = "http://10.0.0.1:9469", "http://10.0.0.2:9469"


@pytest.mark.parametrize(
    "discovered,agent,unknown",
    [
        pytest.param(True, NODE_1, False, id="swarm-own-node-answered"),
        pytest.param(True, NODE_2, True, id="swarm-own-node-failed"),
        pytest.param(True, "", True, id="swarm-node-not-known"),
        pytest.param(False, NODE_1, True, id="listed-agents-any-failure"),
    ],
)
def test_a_failed_agent_makes_gpu_work_unknown_only_where_it_may_be_the_servers(discovered, agent, unknown):
    """No reading for a GPU server while an agent failed: GPU work unknown (never culled as GPU
    idle), unless the agents are the swarm's and the server's own node's agent answered."""
    state = core.PassState(now=0.0, agents=AgentView({}, [NODE_2], discovered), containers=None,
                           gpu_holders=set(), warnings={}, keepalives={}, overrides={})
    info = ContainerInfo("c" * 64, "gpu", "", agent=agent) if agent else None
    assert core._gpu_signal(state, ("ida", ""), True, info) == (None, unknown)
