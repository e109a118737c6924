"""Driving the culler of a test hub (``HubProcess`` with ``hub.culler`` set): a pass on demand,
one server's decision, waiting for one, a user's server made ready, and a kernel kept busy."""

from __future__ import annotations

import json
import time
import uuid

import requests
import websocket


def run_pass(hub) -> dict[tuple[str, str], dict]:
    """Ask the culler for one pass now; its records by (user, server)."""
    r = requests.post(hub.culler + "api/pass", headers={"Authorization": f"token {hub.token}"}, timeout=60,
                      verify=getattr(hub, "verify", True))
    assert r.status_code == 200, r.text
    return {(s["user"], s["server"]): s for s in r.json()["servers"]}


def decision(hub, user: str) -> tuple[str, str]:
    entry = run_pass(hub)[(user, "")]
    return entry["action"], entry["reason"]


def pass_until(hub, user: str, action: str, timeout: float = 40) -> tuple[str, str]:
    """Run passes until ``user``'s default server gets ``action``; fails with every decision seen."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        got = decision(hub, user)
        seen.append(got)
        if got[0] == action:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{user}: no {action} within {timeout}s; decisions: {seen}")


def spawn(hub, name: str, profile: str = "short") -> None:
    r = hub.spawn(name, {"profile": profile})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(name)


def kernels(hub, name: str, token: str) -> list[dict]:
    r = requests.get(f"{hub.url}/user/{name}/api/kernels", headers={"Authorization": f"token {token}"}, timeout=20,
                     verify=getattr(hub, "verify", True))
    assert r.ok, r.text
    return r.json()


def start_busy_kernel(hub, name: str, token: str, code: str) -> str:
    """Start a kernel, run ``code`` in it over its websocket, close the socket (the tab is gone).

    ``hub`` may also give ``verify`` (a CA file: the kernel's websocket is then ``wss://`` to
    ``hub.url``'s host, as through an HTTPS front) instead of the plain ``ws://`` at ``hub.port``."""
    auth = {"Authorization": f"token {token}"}
    verify = getattr(hub, "verify", True)
    r = requests.post(f"{hub.url}/user/{name}/api/kernels", headers=auth, json={"name": "python3"}, timeout=60,
                      verify=verify)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    path = f"/user/{name}/api/kernels/{kernel_id}/channels"
    if isinstance(verify, str):
        ws = websocket.create_connection("wss://" + hub.url.split("://", 1)[1] + path,
                                         header=[f"Authorization: token {token}"], timeout=60,
                                         sslopt={"ca_certs": verify})
    else:
        ws = websocket.create_connection(f"ws://127.0.0.1:{hub.port}{path}",
                                         header=[f"Authorization: token {token}"], timeout=60)
    msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": name, "session": session, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if (msg.get("msg_type") == "execute_input" and msg.get("parent_header", {}).get("msg_id") == msg_id):
            break
    ws.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(k["id"] == kernel_id and k["execution_state"] == "busy" for k in kernels(hub, name, token)):
            return kernel_id
        time.sleep(0.3)
    raise AssertionError(f"kernel of {name} never became busy: {kernels(hub, name, token)}")


# a stand-in for a user's server (the user controls it): answers per /tmp/mode, records the token
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
        kernels = [{"execution_state": "busy"}] if mode == "busy" else [{"execution_state": "idle" * 100}] * 20000
        body = json.dumps(kernels if "kernels" in self.path else {"last_activity": "2026-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", 8888), H).serve_forever()
"""
