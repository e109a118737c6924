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
gets = []
class Hub(BaseHTTPRequestHandler):
    def do_GET(self):
        gets.append({"auth": self.headers.get("Authorization"), "path": self.path})
        if self.path.endswith("/bea"):  # a token that reads the user, not their servers
            body = json.dumps({"kind": "user", "name": "bea", "last_activity": None}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(403)
        self.end_headers()
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

# "your turn": a server seen waiting and then ready, for TURN_SHOWN seconds; none for one that
# was already running, for this server itself, or once the other one stopped
waiting = {"servers": {"": {"ready": True}, "train": {"pending": "spawn", "ready": False}}}
ready = {"servers": {"": {"ready": True}, "train": {"pending": None, "ready": True, "url": "/user/ann/train/"}}}
t = m.Turns("")
t.see(waiting, 100.0)
out["turn_waiting"] = t.notices()
t.see(ready, 110.0)
out["turn_ready"] = t.notices()
t.see(ready, 110.0 + m.TURN_SHOWN + 1)
out["turn_later"] = t.notices()
t2 = m.Turns("")
t2.see(ready, 100.0)
out["turn_never_waited"] = t2.notices()
t3 = m.Turns("train")
t3.see(waiting, 100.0); t3.see(ready, 110.0)
out["turn_itself"] = t3.notices()
t4 = m.Turns("")
t4.see(waiting, 100.0); t4.see(ready, 110.0); t4.see({"servers": {"": {"ready": True}}}, 120.0)
out["turn_stopped"] = t4.notices()
out["turn_garbage"] = (m.Turns("").see({"servers": [1]}, 1.0), m.Turns("").see("x", 1.0))[0]

# a hub that does not give this server read:servers!user (named servers off): asked once
users = "http://127.0.0.1:%d/hub/api" % srv.server_port
hs = m.HubServers({"JUPYTERHUB_API_URL": users, "JUPYTERHUB_API_TOKEN": "own-token", "JUPYTERHUB_USER": "ann"})
hs_first = asyncio.run(hs.notices())
hs._read_at = float("-inf")
out["hub_refused"] = [hs_first, asyncio.run(hs.notices()), hs.allowed, list(gets)]
hb = m.HubServers({"JUPYTERHUB_API_URL": users, "JUPYTERHUB_API_TOKEN": "own-token", "JUPYTERHUB_USER": "bea"})
hb_first = asyncio.run(hb.notices())
hb._read_at = float("-inf")
out["no_servers_in_model"] = [hb_first, asyncio.run(hb.notices()), hb.allowed, gets[len(out["hub_refused"][3]):]]
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


def test_your_turn_comes_for_a_server_seen_waiting_then_ready(results) -> None:
    assert results["turn_waiting"] == []
    (turn,) = results["turn_ready"]
    assert turn["kind"] == "your-turn" and turn["server"] == "train" and turn["url"] == "/user/ann/train/"
    assert turn["keepable"] is False and "\u201ctrain\u201d" in turn["message"]
    for none in ("turn_later", "turn_never_waited", "turn_itself", "turn_stopped"):
        assert results[none] == [], none
    assert results["turn_garbage"] is None


def test_without_the_read_scope_the_server_asks_the_hub_once_with_its_own_token(results) -> None:
    """Named servers off: the token lacks read:servers!user; the hub says 403, or gives the
    user's model without their servers."""
    first, second, allowed, gets = results["hub_refused"]
    assert first == second == [] and allowed is False
    assert gets == [{"auth": "token own-token", "path": "/hub/api/users/ann"}]
    # a hub that answers with the user's model without their servers: the same, asked once
    first, second, allowed, gets = results["no_servers_in_model"]
    assert first == second == [] and allowed is False
    assert gets == [{"auth": "token own-token", "path": "/hub/api/users/bea"}]
