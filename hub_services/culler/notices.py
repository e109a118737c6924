"""The cull notice written into a user's server, and the keep-alive command it offers.

The notice goes in twice: a text file for people (:func:`notice_text`) and its JSON card
(:func:`notice_card`), which the single-user image's JupyterLab extension shows as a
notification with a "Keep my server" button (``images/singleuser/gpuhub_labnotices.py``).

The culler's warnings and keep-alives are stored in gpuhub's database
(:class:`gpuhub_spawner.storage.notices.NoticeStore`); the hub shows them on its pages
(:mod:`gpuhub_spawner.hub.announce`).  Users answer a warning with a keep-alive:
``POST <culler prefix>api/keepalive`` (any server of their own), or the command below, which
the culler counts as activity.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

#: What the notice tells users to run in a terminal of their server to keep it: it posts the
#: server's activity to the hub with the server's own token (``users:activity!user``), which the
#: culler counts as hub activity.  Python, as every Jupyter image has it (curl is not a given).
KEEPALIVE_COMMAND = (
    "python3 -c 'import os,json,datetime,urllib.request as u; e=os.environ; "
    "t=datetime.datetime.now(datetime.timezone.utc).isoformat(); "
    "b=json.dumps({\"servers\": {e.get(\"JUPYTERHUB_SERVER_NAME\", \"\"): {\"last_activity\": t}}}).encode(); "
    "u.urlopen(u.Request(e[\"JUPYTERHUB_ACTIVITY_URL\"], b, {\"Authorization\": \"token \" + e[\"JUPYTERHUB_API_TOKEN\"], "
    "\"Content-Type\": \"application/json\"}), timeout=20); print(\"Kept: the idle warning is lifted at the next pass.\")'"
)


def notice_text(user: str, server: str, message: str, cull_at: float, keepalive_command: str = KEEPALIVE_COMMAND) -> str:
    """The notice file written into the user's server."""
    when = datetime.fromtimestamp(cull_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    name = f"{user}/{server}" if server else user
    lines = [
        "GPU Hub: this server is about to be stopped",
        "",
        message,
        f"Server: {name}. Stop time: {when}.",
        "",
        "Your files in ~/scratch and ~/my-tutorials are kept; only running kernels end.",
    ]
    if keepalive_command:
        lines += [
            "Still working? Use the server (an idle-timeout stop is then called off), or run this in a terminal of it:",
            f"  {keepalive_command}",
            "(A stop for session length, GPU-hour budget or a reserved unit taken back is a limit: activity does not lift it.)",
        ]
    return "\n".join(lines) + "\n"


def notice_card(reason: str, message: str, cull_at: float) -> str:
    """The notice's JSON card for JupyterLab: why (``idle`` can be kept, quota limits cannot),
    what to tell the user, and when (epoch seconds)."""
    return json.dumps({"reason": reason, "message": message, "cull_at": cull_at})
