"""Instructor help: a member of the instructors group opens an attendee's server.

Through JupyterHub's own sharing (JupyterHub 5+): the service grants the instructor a *share* of
that one server (``POST /hub/api/shares/{attendee}/{server}``), so JupyterHub's proxy and the
server's own sign-in let them in as they would the attendee's invitee, and nothing else changes.
Ending the help revokes the share.  Every grant and revocation is logged on the ``gpuhub.audit``
logger (in the hub's log, as the service's output); the attendee sees who holds a share of their
server on every hub page (:func:`gpuhub_spawner.hub.announce.help_lines`).

Who may help whom:

- a helper is a hub admin or a member of the instructors group (``instructors.group`` in
  gpuhub.yaml; empty turns help off);
- an attendee is anyone else: an instructor cannot open another instructor's server or an
  admin's (an admin's server runs with their credentials);
- only a running server is opened, and only to the helper who asks (a share names one user).

The grant is made with the service's own token, which holds ``shares`` and ``access:servers``
for this (a user cannot grant access they do not hold, and an instructor holds none).  That is the
widest scope any gpuhub service holds: the checks above are what stand between an instructor and
a server, so they are made here, on the hub's answers, for every request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hub_services.admin.core import AdminError, Context
from hub_services.common.hubapi import HubAPIError, seg

audit = logging.getLogger("gpuhub.audit")

#: what a helper may do in the attendee's server
ACCESS = ("full",)


@dataclass(frozen=True)
class HelpPolicy:
    group: str = "instructors"  # "" : nobody but admins... and help is off
    access: str = "full"

    @property
    def on(self) -> bool:
        return bool(self.group)

    def may_help(self, model: dict[str, Any] | None) -> bool:
        """The signed-in hub user ``model`` may open attendees' servers."""
        if not self.on or not model or model.get("kind", "user") != "user":
            return False
        return model.get("admin") is True or self.group in (model.get("groups") or [])

    def is_attendee(self, model: dict[str, Any]) -> bool:
        return model.get("admin") is not True and self.group not in (model.get("groups") or [])

    def scopes(self, user: str, server: str) -> list[str]:
        return [f"access:servers!server={user}/{server}"]


def _require_on(policy: HelpPolicy) -> None:
    if not policy.on:
        raise AdminError(404, "Instructor help is off on this hub (instructors.group is empty).")


def _server_path(user: str, server: str) -> str:
    return f"/shares/{seg(user)}/{seg(server)}"


def server_url(base_url: str, user: str, server: str) -> str:
    return f"{base_url.rstrip('/')}/user/{seg(user)}/" + (f"{seg(server)}/" if server else "")


async def _my_shares(ctx: Context, me: str) -> set[tuple[str, str]]:
    """(owner, server) of every server shared with ``me``."""
    shares = await ctx.hub.paginate(f"/users/{seg(me)}/shared")
    found = set()
    for share in shares:
        server = share.get("server") or {}
        owner = (server.get("user") or {}).get("name")
        if owner:
            found.add((str(owner), str(server.get("name") or "")))
    return found


async def overview(ctx: Context, policy: HelpPolicy, me: str) -> dict[str, Any]:
    """Attendees' running servers, and which of them ``me`` holds open."""
    _require_on(policy)
    try:
        users = await ctx.hub.users(state="active")
        mine = await _my_shares(ctx, me)
    except HubAPIError as e:
        raise AdminError(502, f"the hub refused: {e.message}") from None
    servers = []
    for user in users:
        if not policy.is_attendee(user) or user.get("name") == me:
            continue
        for name, server in sorted((user.get("servers") or {}).items()):
            if server.get("ready"):
                servers.append({"user": user["name"], "server": name, "started": server.get("started"),
                                "helping": (user["name"], name) in mine})
    servers.sort(key=lambda s: (s["user"], s["server"]))
    helping = [{"user": u, "server": s} for u, s in sorted(mine)]
    return {"group": policy.group, "access": policy.access, "servers": servers, "helping": helping}


async def _attendee_server(ctx: Context, policy: HelpPolicy, me: str, user: str, server: str) -> dict[str, Any]:
    try:
        model = await ctx.hub.user(user)
    except HubAPIError as e:
        if e.status == 404:
            raise AdminError(404, f"user '{user[:60]}' does not exist") from None
        raise AdminError(502, f"the hub refused: {e.message}") from None
    if user == me or not policy.is_attendee(model):
        raise AdminError(403, f"'{user[:60]}' is an admin or an instructor: only attendees' servers can be opened for help.")
    found = (model.get("servers") or {}).get(server)
    if not found or not found.get("ready"):
        raise AdminError(409, f"{_name(user, server)} is not running: there is nothing to open. "
                              "Ask them to start it first.")
    return found


def _name(user: str, server: str) -> str:
    return f"{user}'s server" + (f" '{server}'" if server else "")


async def start(ctx: Context, policy: HelpPolicy, me: str, user: str, server: str) -> dict[str, Any]:
    """Share ``user``'s running ``server`` with the helper ``me``."""
    _require_on(policy)
    await _attendee_server(ctx, policy, me, user, server)
    body = {"user": me, "scopes": policy.scopes(user, server)}
    try:
        await ctx.hub.request("POST", _server_path(user, server), body)
    except HubAPIError as e:
        raise AdminError(502, f"the hub did not share {_name(user, server)}: {e.message}") from None
    audit.info("help started: %s opened %s (%s access)", me, _name(user, server), policy.access)
    return {"user": user, "server": server, "helper": me, "access": policy.access}


async def end(ctx: Context, policy: HelpPolicy, me: str, user: str, server: str) -> dict[str, Any]:
    """Revoke the share of ``user``'s ``server`` with ``me`` (ending no help is not an error)."""
    _require_on(policy)
    try:
        await ctx.hub.request("PATCH", _server_path(user, server), {"user": me})
    except HubAPIError as e:
        if e.status != 404:  # no such user or server: nothing is shared
            raise AdminError(502, f"the hub did not end the share of {_name(user, server)}: {e.message}") from None
    audit.info("help ended: %s closed %s", me, _name(user, server))
    return {"user": user, "server": server, "helper": me, "ended": True}
