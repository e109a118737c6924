"""Asking a user's server about its kernels from inside its own container, and its notice file.

Shared by the culler (through the hub's local Docker engine: ``hub_services/culler``) and the
node agent (through its node's engine, for servers a swarm placed on that node:
:mod:`.agent_servers`).  Neither sends a token of its own to the server: :data:`PROBE_SCRIPT`
runs in the container as the server's user and asks the server on its loopback with the
server's *own* ``$JUPYTERHUB_API_TOKEN``.

What comes back is the user's, hence untrusted: :func:`run_probe` reads at most
:data:`MAX_OUTPUT` bytes, stops reading at a deadline and answers ``None`` for anything but a
clean exit.  Reading the JSON is the culler's (``hub_services/culler/probe.py``).

``api`` is a ``docker.APIClient``; every call blocks (run them in a thread).
"""

from __future__ import annotations

import posixpath
import time
from typing import Any

#: bytes of output read from the probe at most; more is a failed probe
MAX_OUTPUT = 256 * 1024
#: seconds the script may run inside the container
SCRIPT_TIMEOUT = 10
#: where the cull notice is written in a user's container (the culler's ``notice_path`` default)
NOTICE_PATH = "/home/jovyan/CULL-WARNING.txt"
#: the user the probe and the notice run as in the container (the single-user images' jovyan)
SERVER_UID = "1000"

#: Python run inside the container (no secret in it; its environment is the container's own).
PROBE_SCRIPT = r"""
import json, os, sys, urllib.parse, urllib.request
url = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
path = url.path if url.path.endswith("/") else url.path + "/"
base = "%s://127.0.0.1:%d%s" % (url.scheme or "http", url.port or 8888, path)
auth = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
out = {}
for key in ("kernels", "status"):
    req = urllib.request.Request(base + "api/" + key + "?no_track_activity=1", headers=auth)
    with urllib.request.urlopen(req, timeout=5) as r:
        out[key] = json.loads(r.read(200000))
sys.stdout.write(json.dumps(out))
"""

#: the command run in the container: the script, bounded by coreutils' timeout where present
PROBE_COMMAND = (
    f'if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL {SCRIPT_TIMEOUT} python3 -c "$GPUHUB_PROBE"; '
    'else exec python3 -c "$GPUHUB_PROBE"; fi'
)

#: the notice's machine-readable twin, beside it: JSON ``{"reason", "message", "cull_at"}`` read
#: by the single-user image's JupyterLab extension (``images/singleuser/gpuhub_labnotices.py``)
CARD_NAME = ".gpuhub-notice.json"

#: writes ``$GPUHUB_NOTICE`` to ``$GPUHUB_NOTICE_PATH`` (and ``$GPUHUB_CARD`` to ``$GPUHUB_CARD_PATH``
#: when set) atomically: a reader never sees half of either
WRITE_NOTICE = (
    'printf "%s" "$GPUHUB_NOTICE" > "$GPUHUB_NOTICE_PATH.tmp" && mv -f "$GPUHUB_NOTICE_PATH.tmp" "$GPUHUB_NOTICE_PATH"'
    ' && if [ -n "$GPUHUB_CARD_PATH" ]; then printf "%s" "$GPUHUB_CARD" > "$GPUHUB_CARD_PATH.tmp"'
    ' && mv -f "$GPUHUB_CARD_PATH.tmp" "$GPUHUB_CARD_PATH"; fi'
)
REMOVE_NOTICE = 'rm -f "$GPUHUB_NOTICE_PATH" "$GPUHUB_CARD_PATH"'


def card_path(path: str) -> str:
    """Where the card of the notice file ``path`` goes: the same directory."""
    return posixpath.join(posixpath.dirname(path), CARD_NAME)


def run_script(api: Any, container_id: str, script: str, env: dict[str, str]) -> bool:
    """Run ``sh -c script`` in the container as the server's user; did it exit 0?"""
    result = api.exec_create(container_id, ["sh", "-c", script], user=SERVER_UID, environment=env)
    api.exec_start(result["Id"])
    return int(api.exec_inspect(result["Id"]).get("ExitCode") or 0) == 0


def write_notice(api: Any, container_id: str, text: str, path: str = NOTICE_PATH, card: str = "") -> bool:
    """Write the notice ``text`` (for people) and, when given, its ``card`` (JSON, for JupyterLab)."""
    env = {"GPUHUB_NOTICE": text, "GPUHUB_NOTICE_PATH": path}
    if card:
        env.update(GPUHUB_CARD=card, GPUHUB_CARD_PATH=card_path(path))
    return run_script(api, container_id, WRITE_NOTICE, env)


def remove_notice(api: Any, container_id: str, path: str = NOTICE_PATH) -> bool:
    return run_script(api, container_id, REMOVE_NOTICE, {"GPUHUB_NOTICE_PATH": path, "GPUHUB_CARD_PATH": card_path(path)})


def run_probe(api: Any, container_id: str, deadline: float | None = None) -> bytes | None:
    """The probe's raw output (at most :data:`MAX_OUTPUT` bytes), or None: more output than
    that, a non-zero exit, or output still coming at ``deadline`` (``time.monotonic()``)."""
    result = api.exec_create(container_id, ["sh", "-c", PROBE_COMMAND], user=SERVER_UID,
                             environment={"GPUHUB_PROBE": PROBE_SCRIPT})
    out = bytearray()
    for stdout, _stderr in api.exec_start(result["Id"], stream=True, demux=True):
        out += stdout or b""
        if len(out) > MAX_OUTPUT:
            return None  # the user's container talks too much: not an answer
        if deadline is not None and time.monotonic() > deadline:
            return None
    if int(api.exec_inspect(result["Id"]).get("ExitCode") or 0) != 0:
        return None
    return bytes(out)
