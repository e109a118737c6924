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


class NoticesHandler(APIHandler):
    """``GET gpuhub/notices``: the warnings to show.  Polling it is not activity (it must not
    keep an idle server alive by itself)."""

    _track_activity = False

    @web.authenticated
    def get(self) -> None:
        self.finish({"notices": read_notices(notice_path()), "now": time.time()})


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
