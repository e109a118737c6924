"""The single-user image's JupyterLab notices, inside the real image (no hub): the extension is
installed and enabled, the server half reads only well-formed cards, and "Keep my server"
reports each way the hub can fail instead of claiming success.

The whole path (culler -> card -> JupyterLab notification -> keep -> warning lifted) runs in a
real browser in ``tests/e2e/test_lab_notices.py``; the endpoints through a real hub in
``tests/hub_services/test_culler_service.py``.
"""

from __future__ import annotations

import json

import pytest
from harness import IMAGE

pytestmark = [pytest.mark.docker]

#: run in the image as its user: a tiny stand-in for the hub's activity API, then the module's calls
SCRIPT = r"""
import asyncio, json, os, tempfile, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
import gpuhub_labnotices as m

seen = []
class Hub(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen.append({"auth": self.headers.get("Authorization"), "body": json.loads(body)})
        self.send_response(403 if "refuse" in self.path else 200)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = HTTPServer(("127.0.0.1", 0), Hub)
threading.Thread(target=srv.serve_forever, daemon=True).start()
hub = "http://127.0.0.1:%d/hub/api/users/ann/activity" % srv.server_port
env = {"JUPYTERHUB_API_TOKEN": "own-token", "JUPYTERHUB_SERVER_NAME": ""}
out = {}
out["ok"] = asyncio.run(m.post_activity({**env, "JUPYTERHUB_ACTIVITY_URL": hub}))
out["refused"] = asyncio.run(m.post_activity({**env, "JUPYTERHUB_ACTIVITY_URL": hub + "?refuse=1"}))
out["down"] = asyncio.run(m.post_activity({**env, "JUPYTERHUB_ACTIVITY_URL": "http://127.0.0.1:9/x"}))
out["no_hub"] = asyncio.run(m.post_activity({}))
out["seen"] = seen

d = tempfile.mkdtemp()
def cards(text):
    p = os.path.join(d, "card.json")
    if text is not None:
        open(p, "w").write(text)
    elif os.path.exists(p):
        os.remove(p)
    return m.read_notices(p)
out["absent"] = cards(None)
out["idle"] = cards(json.dumps({"reason": "idle", "message": "Stop at 12:00", "cull_at": 1700000000.5}))
out["budget"] = cards(json.dumps({"reason": "gpu-budget", "message": "Budget used", "cull_at": 1700000000}))
out["garbage"] = cards("{not json")
out["wrong_types"] = cards(json.dumps({"reason": "idle", "message": 3, "cull_at": "soon"}))
out["a_list"] = cards("[1, 2]")
out["huge"] = cards(json.dumps({"reason": "idle", "message": "x" * (m.MAX_NOTICE + 10), "cull_at": 1}))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(docker_client) -> dict:
    out = docker_client.containers.run(IMAGE, ["python", "-c", SCRIPT], remove=True, user="1000",
                                       entrypoint=[])
    return json.loads(out.decode().strip().splitlines()[-1])


def test_the_extension_is_installed_and_enabled_in_the_image(docker_client) -> None:
    out = docker_client.containers.run(
        IMAGE, ["sh", "-c", "jupyter labextension list 2>&1; jupyter server extension list 2>&1"],
        remove=True, entrypoint=[],
    ).decode()
    lab = [line for line in out.splitlines() if "@gpuhub/lab-notices" in line]
    server = [line for line in out.splitlines() if "gpuhub_labnotices" in line and "enabled" in line]
    assert lab and "enabled" in lab[0] and "OK" in lab[0], out
    assert server, out
    # Node.js built it in another stage: the image does not carry it
    assert docker_client.containers.run(IMAGE, ["sh", "-c", "command -v node || echo none"], remove=True,
                                        entrypoint=[]).decode().strip() == "none"


def test_keep_posts_the_servers_own_token_and_reports_every_failure(results) -> None:
    assert results["ok"] == ""
    assert results["refused"] == "the hub answered 403 (this server's token was refused)"
    assert results["down"].startswith("the hub did not answer")
    assert results["no_hub"] == "this server was not started by a JupyterHub (no activity URL or token)"
    first = results["seen"][0]
    assert first["auth"] == "token own-token"
    assert set(first["body"]["servers"]) == {""} and first["body"]["servers"][""]["last_activity"].endswith("Z")


def test_only_well_formed_cards_become_notifications(results) -> None:
    assert results["absent"] == []
    (idle,) = results["idle"]
    assert idle == {"id": "idle:1700000000", "kind": "cull-warning", "reason": "idle", "message": "Stop at 12:00",
                    "cull_at": 1700000000.5, "keepable": True}
    (budget,) = results["budget"]
    assert budget["keepable"] is False  # a quota limit: no "Keep my server" button
    for bad in ("garbage", "wrong_types", "a_list", "huge"):
        assert results[bad] == [], bad
