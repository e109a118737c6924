"""gpuhub's notices inside JupyterLab: the Jupyter server half of the ``@gpuhub/lab-notices`` extension.

The culler writes a cull warning into the user's server twice: ``~/CULL-WARNING.txt`` for people
(the fallback, readable in any image) and ``~/.gpuhub-notice.json`` for this extension
(``{"reason", "message", "cull_at"}``).  JupyterLab's half (``labnotices/lib/index.js``) polls
``GET <server>/gpuhub/notices`` while its tab is visible and shows each warning as a JupyterLab
notification; "Keep my server" calls ``POST <server>/gpuhub/keep``, which posts the server's
activity to the hub with the server's *own* token (``JUPYTERHUB_API_TOKEN``, scope
``users:activity!user``), exactly as the notice's keep-alive command does.  The culler counts
that activity and lifts an idle warning at its next pass; it then removes both files and the
notification says the warning was lifted.

Only an idle warning can be kept: a stop for session length or an exhausted GPU-hour budget is
a quota limit, and its notification says so instead of offering the button.

"Your turn": with named servers (``hub.named_servers``), someone working in one server may start
another that waits in line for a GPU.  The hub then gives each server's token the scope
``read:servers!user`` (its own user's servers, nothing else), and the notices poll reads the
user's model from the hub (at most every :data:`HUB_READ_EVERY` seconds, only while a JupyterLab
tab is visible); a server of the user that was seen waiting (pending a spawn) and is now ready
gives a "your turn" notice for :data:`TURN_SHOWN` seconds, with a link to open it.  Without the
scope the hub leaves the servers out of the user's model (or answers 403): the server stops
asking.

Enabled by ``jupyter_server_config.d/gpuhub_labnotices.json`` in the single-user image.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)

#: the culler's machine-readable notice (``GPUHUB_NOTICE_JSON`` overrides it)
NOTICE_JSON = os.path.join(os.path.expanduser("~"), ".gpuhub-notice.json")
#: bytes of the notice file read at most (the culler writes a few hundred)
MAX_NOTICE = 64 * 1024
#: the warning reasons activity can lift (the culler's ``decide.LIFTED_BY_ACTIVITY``)
KEEPABLE = {"idle", "over-share"}
HUB_TIMEOUT = 20.0
#: seconds between two reads of the user's servers from the hub (the tab polls every 10 s)
HUB_READ_EVERY = 8.0
#: seconds a "your turn" notice is shown after the server became ready
TURN_SHOWN = 600.0


def notice_path() -> str:
    return os.environ.get("GPUHUB_NOTICE_JSON") or NOTICE_JSON


def read_notices(path: str) -> list[dict[str, Any]]:
    """The warnings in the notice file: none when it is absent, unreadable or not a warning."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read(MAX_NOTICE + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("gpuhub: cannot read the notice file %s: %s", path, e)
        return []
    try:
        doc = json.loads(raw) if len(raw) <= MAX_NOTICE else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        log.warning("gpuhub: the notice file %s is not a notice; ignored", path)
        return []
    reason, message, cull_at = doc.get("reason"), doc.get("message"), doc.get("cull_at")
    if not isinstance(reason, str) or not isinstance(message, str) or not isinstance(cull_at, (int, float)):
        log.warning("gpuhub: the notice file %s lacks reason, message or cull_at; ignored", path)
        return []
    return [{
        "id": f"{reason}:{int(cull_at)}",
        "kind": "cull-warning",
        "reason": reason,
        "message": message,
        "cull_at": float(cull_at),
        "keepable": reason in KEEPABLE,
    }]


async def post_activity(env: dict[str, str] | None = None) -> str:
    """Post this server's activity to the hub with its own token; '' when the hub took it, else why not."""
    env = dict(os.environ if env is None else env)
    url, token = env.get("JUPYTERHUB_ACTIVITY_URL", ""), env.get("JUPYTERHUB_API_TOKEN", "")
    if not url or not token:
        return "this server was not started by a JupyterHub (no activity URL or token)"
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    body = {"servers": {env.get("JUPYTERHUB_SERVER_NAME", ""): {"last_activity": now}}, "last_activity": now}
    request = HTTPRequest(
        url, method="POST", body=json.dumps(body), request_timeout=HUB_TIMEOUT,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        return f"the hub answered {e.code}" + (" (this server's token was refused)" if e.code in (401, 403) else "")
    except OSError as e:
        return f"the hub did not answer ({e.strerror or e})"
    return ""


class Turns:
    """The user's *other* servers, followed from the hub's user model: which were seen waiting
    (a spawn pending) and are now ready: their "your turn" notices."""

    def __init__(self, me: str = ""):
        self.me = me  # this server's name ("" the default one)
        self.waiting: set[str] = set()
        self.ready_at: dict[str, tuple[float, str]] = {}  # server -> (when seen ready, its URL)

    def see(self, model: dict[str, Any], now: float) -> None:
        servers = model.get("servers") if isinstance(model, dict) else None
        servers = servers if isinstance(servers, dict) else {}
        for name, server in servers.items():
            if name == self.me or not isinstance(server, dict):
                continue
            if server.get("pending") == "spawn":
                self.waiting.add(name)
                self.ready_at.pop(name, None)
            elif server.get("ready") and name in self.waiting:
                self.waiting.discard(name)
                self.ready_at[name] = (now, str(server.get("url") or ""))
        for name in list(self.ready_at):
            gone = not (servers.get(name) or {}).get("ready")
            if gone or now - self.ready_at[name][0] > TURN_SHOWN:
                del self.ready_at[name]
        self.waiting &= set(servers)

    def notices(self) -> list[dict[str, Any]]:
        return [{
            "id": f"turn:{name}:{int(at)}",
            "kind": "your-turn",
            "reason": "your-turn",
            "server": name,
            "url": url,
            "message": f"Your turn: your server \u201c{name}\u201d has what it waited for and is ready.",
            "keepable": False,
        } for name, (at, url) in sorted(self.ready_at.items())]


class HubServers:
    """Reads the user's model from the hub with this server's own token (scope
    ``read:servers!user``), at most every :data:`HUB_READ_EVERY` seconds; stops asking on 403."""

    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        api, self.token, user = (env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", ""),
                                 env.get("JUPYTERHUB_USER", ""))
        self.url = url_path_join(api, "users", user) if api and user else ""
        self.turns = Turns(env.get("JUPYTERHUB_SERVER_NAME", ""))
        self.allowed = bool(self.url and self.token)
        self._read_at = float("-inf")

    async def notices(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self.allowed and now - self._read_at >= HUB_READ_EVERY:
            self._read_at = now
            request = HTTPRequest(self.url, request_timeout=HUB_TIMEOUT,
                                  headers={"Authorization": f"token {self.token}"})
            try:
                response = await AsyncHTTPClient().fetch(request)
                model = json.loads(response.body)
                if not isinstance(model, dict) or "servers" not in model:
                    self.allowed = False  # the token reads the user, not their servers: named servers are off
                    log.info("gpuhub: the hub does not let this server read its user's servers")
                self.turns.see(model, time.time())
            except HTTPClientError as e:
                if e.code in (401, 403, 404):
                    self.allowed = False  # no read:servers!user: named servers are off at this hub
                    log.info("gpuhub: the hub does not let this server read its user's servers (%s)", e.code)
                else:
                    log.warning("gpuhub: could not read this user's servers from the hub: %s", e)
            except (OSError, ValueError) as e:
                log.warning("gpuhub: could not read this user's servers from the hub: %s", e)
        return self.turns.notices()


class NoticesHandler(APIHandler):
    """``GET gpuhub/notices``: the warnings to show.  Polling it is not activity (it must not
    keep an idle server alive by itself)."""

    _track_activity = False

    @web.authenticated
    async def get(self) -> None:
        hub = self.settings.get("gpuhub_servers")
        if hub is None:  # one per server process: it remembers which servers were seen waiting
            hub = self.settings["gpuhub_servers"] = HubServers()
        self.finish({"notices": read_notices(notice_path()) + await hub.notices(), "now": time.time()})


class KeepHandler(APIHandler):
    """``POST gpuhub/keep``: the user keeps their server (the server's activity, to the hub)."""

    @web.authenticated
    async def post(self) -> None:
        failed = await post_activity()
        if failed:
            self.log.warning("gpuhub: keep-alive not delivered: %s", failed)
            raise web.HTTPError(502, f"Your server could not be kept: {failed}. Try again, or use the hub's home page.")
        self.log.info("gpuhub: keep-alive posted to the hub")
        self.finish({"kept": True, "at": time.time()})


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "gpuhub_labnotices"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "gpuhub/notices"), NoticesHandler),
        (url_path_join(base, "gpuhub/keep"), KeepHandler),
    ])
