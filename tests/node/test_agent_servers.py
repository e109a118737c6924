"""The node agent's kernel probe and notice for the culler (gpuhub_spawner/node/agent_servers.py)
against real containers on this machine's engine: the agent's real tornado application.

A gpuhub "server" here is the single-user image running a stand-in Jupyter server (it answers
per /tmp/mode: busy kernels, megabytes, or nothing for two minutes) with gpuhub's server labels.
Besides it: a container without gpuhub's labels and one of another hub, which the agent must
refuse whatever the token.  No NVML is involved (the routes never sample it).
"""

from __future__ import annotations

import os
import time

import pytest
import requests
from harness import IMAGE, TEST_LABEL

from gpuhub_spawner.node.agent import NodeAgent
from gpuhub_spawner.node.agent_servers import MAX_NOTICE, ServerExec
from gpuhub_spawner.node.cgroup import ProcReader
from gpuhub_spawner.node.containers import ContainerDirectory
from hub_services.culler.probe import parse_probe

pytestmark = [pytest.mark.docker]

TOKEN = "agent-servers-test-token-0123456789"
HUB = "agentsrv"
NOTICE = "/tmp/CULL-WARNING.txt"
TIMEOUT = 3.0
FAKE_SERVER = r"""
import json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        with open("/tmp/auth.txt", "a") as f:
            f.write(self.headers.get("Authorization", "") + "\n")
        mode = open("/tmp/mode").read().strip()
        if mode == "hang":
            time.sleep(120)
        kernels = [{"execution_state": "busy"}] if mode == "busy" else [{"execution_state": "x" * 400}] * 5000
        body = json.dumps(kernels if "kernels" in self.path else {"last_activity": "2026-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
open("/tmp/mode", "w").write("busy")
ThreadingHTTPServer(("127.0.0.1", 8888), H).serve_forever()
"""


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
        made["own_token"] = own
        yield made
    finally:
        for c in made.values():
            if not isinstance(c, str):
                c.remove(force=True)


@pytest.fixture(scope="module")
def agent_url(docker_client, containers, _module_agent):
    directory = ContainerDirectory(docker_client.api, hub_id=HUB)
    agent = NodeAgent("node-t", directory, ProcReader("/proc"))
    servers = ServerExec(docker_client.api, HUB, timeout=TIMEOUT, notice_path=NOTICE)
    return _module_agent(agent, TOKEN, servers)


@pytest.fixture(scope="module")
def _module_agent():
    """The agent's real application on a loopback port, for the module (as conftest's serve_agent)."""
    import asyncio
    import socket
    import threading

    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from gpuhub_spawner.node.agent import make_web_app

    loops = []

    def start(agent, token, servers):
        [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        loop = asyncio.new_event_loop()
        loops.append(loop)
        started = threading.Event()

        def run():
            asyncio.set_event_loop(loop)

            async def serve():
                HTTPServer(make_web_app(agent, token, servers), max_body_size=2 * MAX_NOTICE).add_sockets([sock])
                started.set()

            loop.run_until_complete(serve())
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(10)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for loop in loops:
        loop.call_soon_threadsafe(loop.stop)


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
    r = _call("DELETE", url)
    assert r.status_code == 200 and r.json()["removed"] is True, r.text
    assert _file(server, NOTICE) is None
