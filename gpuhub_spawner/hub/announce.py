"""What each signed-in user is told on the hub's pages: their cull warnings and notices.

The culler writes a warning row when it announces a cull (and deletes it when the warning is
lifted or the server stopped); the hub writes a notice when a user's server stopped while it
was down.  Both live in gpuhub's database (:mod:`gpuhub_spawner.storage.notices`); this module
renders them in the hub's pages through a ``c.JupyterHub.template_vars`` callable
(:func:`hub_announcement`), in the hub process, with or without the culler.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gpuhub_spawner.storage.notices import NoticeStore, WarningRow

log = logging.getLogger(__name__)


def announcement_html(
    rows: list[WarningRow], now: float, keepalive_url: str, notices: Sequence[tuple[str, str]] = ()
) -> str:
    """The warning banner for the hub's pages (escaped; the template marks it safe)."""
    parts = [f'<div class="gpuhub-notice">{html.escape(text)}</div>' for _server, text in notices]
    for row in rows:
        left = max(0, int(row.cull_at - now))
        name = html.escape(row.server or "default")
        when = f"{left // 60} min {left % 60} s" if left >= 60 else f"{left} s"
        text = html.escape(row.message or "Your server will be stopped.")
        parts.append(
            f'<div class="gpuhub-cull-warning">Server <b>{name}</b>: {text} '
            f'(time left: <span class="gpuhub-cull-left">{when}</span>)</div>'
        )
    if parts and keepalive_url:
        parts.append(f'<div><a href="{html.escape(keepalive_url)}">Keep my server running</a></div>')
    return "".join(parts)


def hub_announcement(url: str, keepalive_url: str = "", fallback: Any = "", ttl: float = 2.0) -> Callable[[Any], str]:
    """A ``c.JupyterHub.template_vars`` callable: the signed-in user's cull warnings and notices.

    The hub renders it on every page, on its event loop, so it never touches the database:
    it answers from the last known warnings at once, and when those are older than ``ttl``
    seconds it starts one refresh in a thread (one at a time).  A slow or unreachable
    database therefore delays the banner, never the hub.  ``fallback`` (a string or a callable
    of the user) is shown as well, so a site announcement is not lost.
    """
    cache = _WarningCache(url, ttl)

    def announcement(user: Any) -> str:
        extra = fallback(user) if callable(fallback) else (fallback or "")
        if user is None or not getattr(user, "name", None):
            return extra
        rows = cache.rows_of(user.name)
        # a notice about a server that runs again (adopted after a crash, or started) is old news
        notices = [(srv, text) for srv, text in cache.notices.get(user.name, []) if not _active(user, srv)]
        return announcement_html(rows, time.time(), keepalive_url, notices) + shared_html(user) + extra

    return announcement


def shared_html(user: Any) -> str:
    """Who else may open this user's servers: the shares JupyterHub holds for them (instructor
    help grants one: ``hub_services/admin/instructor_help.py``).  Read from the hub's own database session,
    as JupyterHub's pages read the user (one small query when the session has no fresh copy)."""
    orm_user = getattr(user, "orm_user", None)
    try:
        shares = list(getattr(orm_user, "shares", None) or [])
    except Exception as e:  # noqa: BLE001 - a page still renders; the next one tries again
        log.warning("Could not read who may open %s's servers: %s", getattr(user, "name", "?"), e)
        return ""
    parts = []
    for share in shares:
        who = share.user.name if share.user is not None else f"members of {share.group.name}" if share.group else "?"
        server = f"your server <b>{html.escape(share.spawner.name)}</b>" if share.spawner.name else "your server"
        since = share.created_at.strftime("%H:%M UTC on %d %b") if share.created_at else "a while"
        parts.append(
            f'<div class="gpuhub-shared">Help: <b>{html.escape(who)}</b> can open {server} and work in it as you can'
            f" (since {since}). It ends when they close it; ask them or a hub admin to end it sooner.</div>"
        )
    return "".join(parts)


def _active(user: Any, server: str) -> bool:
    spawner = (getattr(user, "spawners", None) or {}).get(server)
    return bool(spawner is not None and getattr(spawner, "active", False))


class _WarningCache:
    """Every user's warnings, read off the event loop in a thread; reads never wait for it."""

    def __init__(self, url: str, ttl: float):
        self.url = url
        self.ttl = ttl
        self.store: NoticeStore | None = None
        self.by_user: dict[str, list[WarningRow]] = {}
        self.notices: dict[str, list[tuple[str, str]]] = {}
        self.read_at = float("-inf")
        self.refreshing = False
        self.failing = False
        self.lock = threading.Lock()

    def rows_of(self, name: str) -> list[WarningRow]:
        with self.lock:
            start = not self.refreshing and time.monotonic() - self.read_at >= self.ttl
            if start:
                self.refreshing = True
        if start:
            threading.Thread(target=self._refresh, name="gpuhub-cull-warnings", daemon=True).start()
        return self.by_user.get(name, [])

    def _refresh(self) -> None:
        try:
            if self.store is None:
                self.store = NoticeStore(self.url)
            by_user: dict[str, list[WarningRow]] = {}
            for row in sorted(self.store.warnings().values(), key=lambda r: r.cull_at):
                by_user.setdefault(row.user, []).append(row)
            self.by_user = by_user
            self.notices = self.store.notices()
            if self.failing:
                log.info("Cull warnings can be read again")
            self.failing = False
        except Exception as e:  # noqa: BLE001 - pages render with the last known warnings
            if not self.failing:
                log.warning("Could not read cull warnings (pages show the last known ones): %s", e)
            self.failing = True
        finally:
            with self.lock:
                self.read_at = time.monotonic()
                self.refreshing = False
