"""Cull warnings and keep-alives, shared by the culler and the hub process.

The culler writes a warning row when it announces a cull and deletes it when the warning is
lifted or the server is stopped; the hub renders the user's warnings in its pages through a
template variable (:func:`hub_announcement`).  Both sides reach the same table in the GPU
usage ledger's database (``gpuhub_cull_warning``, ``gpuhub_keepalive``), so a restart of
either loses nothing.

Users answer a warning with a keep-alive: ``POST <culler prefix>api/keepalive`` (any server of
their own), which the culler counts as activity.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Float, String, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from gpuhub_spawner.storage.ledger import UserNotice, make_engine, read_notices

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class WarningRow(Base):
    """One announced cull; times are epoch seconds."""

    __tablename__ = "gpuhub_cull_warning"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    server: Mapped[str] = mapped_column(String(255), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    warned_at: Mapped[float] = mapped_column(Float)
    cull_at: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(String(1000), default="")


class KeepaliveRow(Base):
    """The latest keep-alive of one server."""

    __tablename__ = "gpuhub_keepalive"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    server: Mapped[str] = mapped_column(String(255), primary_key=True)
    at: Mapped[float] = mapped_column(Float)


class NoticeStore:
    """Warnings and keep-alives in the database at ``url`` (tables created when missing)."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        UserNotice.metadata.create_all(self.engine, tables=[UserNotice.__table__])
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def warnings(self) -> dict[tuple[str, str], WarningRow]:
        with self._session() as session:
            return {(r.user, r.server): r for r in session.scalars(select(WarningRow))}

    def warnings_of(self, user: str) -> list[WarningRow]:
        with self._session() as session:
            query = select(WarningRow).where(WarningRow.user == user).order_by(WarningRow.cull_at)
            return list(session.scalars(query))

    def set_warning(self, user: str, server: str, reason: str, warned_at: float, cull_at: float, message: str) -> None:
        with self._session.begin() as session:
            row = session.get(WarningRow, (user, server)) or WarningRow(user=user, server=server)
            row.reason, row.warned_at, row.cull_at, row.message = reason, warned_at, cull_at, message[:1000]
            session.add(row)

    def clear_warning(self, user: str, server: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(WarningRow).where(WarningRow.user == user, WarningRow.server == server))

    def user_notices(self) -> dict[str, list[tuple[str, str]]]:
        """Notices the hub wrote for users (a server stopped while it was down): user -> [(server, text)]."""
        with self._session() as session:
            return read_notices(session)

    def keepalives(self) -> dict[tuple[str, str], float]:
        with self._session() as session:
            return {(r.user, r.server): r.at for r in session.scalars(select(KeepaliveRow))}

    def keepalive(self, user: str, server: str, at: float | None = None, running: set[str] | None = None) -> None:
        """Record a keep-alive; with ``running`` (the user's running servers), the user's rows of
        other servers are dropped, so a user never holds more rows than running servers."""
        with self._session.begin() as session:
            if running is not None:
                session.execute(delete(KeepaliveRow).where(
                    KeepaliveRow.user == user, KeepaliveRow.server.not_in(sorted(running | {server}))))
            row = session.get(KeepaliveRow, (user, server)) or KeepaliveRow(user=user, server=server)
            row.at = time.time() if at is None else at
            session.add(row)

    def forget_keepalive(self, user: str, server: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(KeepaliveRow).where(KeepaliveRow.user == user, KeepaliveRow.server == server))

    def dispose(self) -> None:
        self.engine.dispose()


# ---- what users read -------------------------------------------------------------------


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
            "(A stop for session length or GPU-hour budget is a quota limit: activity does not lift it.)",
        ]
    return "\n".join(lines) + "\n"


def announcement_html(rows: list[WarningRow], now: float, keepalive_url: str,
                      notices: list[tuple[str, str]] = ()) -> str:
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
        return announcement_html(rows, time.time(), keepalive_url, notices) + extra

    return announcement


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
            self.notices = self.store.user_notices()
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
