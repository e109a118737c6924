"""The node agent's kernel probe and notice for the culler (gpuhub_spawner/node/agent_servers.py)
against real containers on this machine's engine: the agent's real tornado application.

A gpuhub "server" here is the single-user image running a stand-in Jupyter server (it answers
per /tmp/mode: busy kernels, megabytes, or nothing for two minutes) with gpuhub's server labels.
Besides it: a container without gpuhub's labels and one of another hub, which the agent must
refuse whatever the token.  No NVML is involved (the routes never sample it).
"""

from __future__ import annotations

import json
import os
import posixpath
import time

import pytest
import requests
from cullerpass import FAKE_SERVER
from harness import IMAGE, TEST_LABEL

from gpuhub_spawner.node.agent import NodeAgent
from gpuhub_spawner.node.agent_servers import MAX_NOTICE, ServerExec
from gpuhub_spawner.node.cgroup import ProcReader
from gpuhub_spawner.node.containers import ContainerDirectory
from gpuhub_spawner.node.kernel_probe import CARD_NAME
from hub_services.culler.probe import parse_probe

pytestmark = [pytest.mark.docker]

TOKEN = "agent-servers-test-token-0123456789"
HUB = "agentsrv"
NOTICE = "/tmp/CULL-WARNING.txt"
TIMEOUT = 3.0


def _labels(hub: str, user: str) -> dict[str, str]:
    return {TEST_LABEL: "agent-servers", "org.gpuhub.hub": hub, "org.gpuhub.user": user,
            "org.gpuhub.server": "", "org.gpuhub.profile": "gpu", "org.gpuhub.pool": "gpu"}


@pytest.fixture(scope="module")
def containers(docker_client):
    own = os.urandom(16).hex()
    env = {"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/alice/", "JUPYTERHUB_API_TOKEN": own}
    made = {}
    try:
        for name, labels in (("server", _labels(HUB, "alice")), ("other-hub", _labels("elsewhere", "bob")),
                             ("plain", {TEST_LABEL: "agent-servers"})):
            made[name] = docker_client.containers.run(
                IMAGE, ["python3", "-c", FAKE_SERVER], detach=True, user="1000", labels=labels, environment=env,
            )
        for c in made.values():  # the stand-in answers per /tmp/mode
            _wait_running(c)
            _mode(c, "busy")
        made["own_token"] = own
        yield made
    finally:
        for c in made.values():
            if not isinstance(c, str):
                c.remove(force=True)


@pytest.fixture
def agent_url(docker_client, containers, serve_agent):
    directory = ContainerDirectory(docker_client.api, hub_id=HUB)
    agent = NodeAgent("node-t", directory, ProcReader("/proc"))
    return serve_agent(agent, TOKEN, ServerExec(docker_client.api, HUB, timeout=TIMEOUT, notice_path=NOTICE))


def _wait_running(container) -> None:
    deadline = time.monotonic() + 30
    while container.reload() or container.status != "running":
        assert time.monotonic() < deadline, container.logs().decode(errors="replace")
        time.sleep(0.2)


def _call(method: str, url: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, url, headers=headers, timeout=30, **kwargs)


def _mode(container, mode: str) -> None:
    assert container.exec_run(["sh", "-c", f"echo {mode} > /tmp/mode"], user="1000").exit_code == 0


def _file(container, path: str) -> str | None:
    code, out = container.exec_run(["cat", path], user="1000")
    return out.decode() if code == 0 else None


def test_refusals_token_and_containers_that_are_not_this_hubs_servers(agent_url, containers):
    server = containers["server"]
    probe = f"{agent_url}/api/servers/{server.id}/probe"
    for token in (None, "wrong-" + TOKEN):
        r = _call("POST", probe, token)
        assert r.status_code == 401, r.text
        r = _call("PUT", f"{agent_url}/api/servers/{server.id}/notice", token, json={"text": "x"})
        assert r.status_code == 401, r.text
    assert _file(server, NOTICE) is None
    refused = {
        "ABCDEF123456": 400, "alice": 400, "a" * 64: 404,
        containers["plain"].id: 403, containers["other-hub"].id: 403,
    }
    for cid, status in refused.items():
        for method, what, body in (("POST", "probe", None), ("PUT", "notice", {"text": "x"}),
                                   ("DELETE", "notice", None)):
            r = _call(method, f"{agent_url}/api/servers/{cid}/{what}", json=body)
            assert r.status_code == status, (cid, method, r.text)
    for name in ("plain", "other-hub"):
        assert _file(containers[name], NOTICE) is None  # nothing written where it was refused
        assert _file(containers[name], "/tmp/auth.txt") is None  # and no probe ran there


def test_probe_answers_the_servers_kernels_bounded_in_size_and_time(agent_url, containers):
    server = containers["server"]
    url = f"{agent_url}/api/servers/{server.id}/probe"
    deadline = time.monotonic() + 30
    while (r := _call("POST", url)).status_code != 200:
        assert time.monotonic() < deadline, (r.status_code, r.text, server.logs().decode(errors="replace"))
        time.sleep(0.5)
    doc = r.json()
    assert (doc["node"], doc["user"], doc["server"]) == ("node-t", "alice", "")
    kernels, _ = parse_probe(doc["output"].encode())
    assert [k.execution_state for k in kernels] == ["busy"]

    _mode(server, "huge")  # megabytes from the user's server: a failed probe, not an answer
    r = _call("POST", url)
    assert r.status_code == 502 and "output" not in r.json(), r.text

    _mode(server, "hang")  # a server that never answers: the agent answers within its timeout
    t0 = time.monotonic()
    r = _call("POST", url)
    assert r.status_code == 504, r.text
    assert time.monotonic() - t0 < TIMEOUT + 2
    _mode(server, "busy")
    auth = _file(server, "/tmp/auth.txt") or ""
    assert set(auth.split()) == {"token", containers["own_token"]}  # only the server's own token
    assert TOKEN not in auth


def test_notice_is_written_and_removed_in_the_server_only(agent_url, containers):
    server = containers["server"]
    url = f"{agent_url}/api/servers/{server.id}/notice"
    text = "GPU Hub: this server is about to be stopped\n'quoted' $HOME `x`\n"
    r = _call("PUT", url, json={"text": text})
    assert r.status_code == 200 and r.json()["written"] is True, r.text
    assert _file(server, NOTICE) == text  # as sent: nothing expanded by the shell
    assert _call("PUT", url, json={"text": "x" * (MAX_NOTICE + 1)}).status_code == 413
    assert _call("PUT", url, json={"nottext": 1}).status_code == 400
    assert _file(server, NOTICE) == text
    # with its JSON card for JupyterLab, beside the notice; both go on DELETE
    card = json.dumps({"reason": "idle", "message": "Stop at 12:00 'x' $HOME", "cull_at": 1.5e9})
    r = _call("PUT", url, json={"text": text, "card": card})
    assert r.status_code == 200, r.text
    card_file = posixpath.join(posixpath.dirname(NOTICE), CARD_NAME)
    assert _file(server, card_file) == card and _file(server, NOTICE) == text
    assert _call("PUT", url, json={"text": text, "card": {"not": "a string"}}).status_code == 400
    r = _call("DELETE", url)
    assert r.status_code == 200 and r.json()["removed"] is True, r.text
    assert _file(server, NOTICE) is None and _file(server, card_file) is None
