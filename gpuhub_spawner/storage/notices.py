"""What users must be told, and what they answer: notices, cull warnings and keep-alives.

Three tables in gpuhub's database, written by several processes and read by the hub's pages:

- ``gpuhub_user_notice``: something a user must be told on the hub's pages (their server
  stopped while the hub was down), kept until their next start of that server; the hub writes
  it (through the usage ledger, :class:`UserNotices`).
- ``gpuhub_cull_warning``: a cull the culler announced; deleted when the warning is lifted or
  the server stopped.
- ``gpuhub_keepalive``: the latest keep-alive of a server (``POST <culler prefix>api/keepalive``),
  which the culler counts as activity.

Rows live in the database, so a restart of the hub or the culler loses nothing.  The hub
renders them with :mod:`gpuhub_spawner.hub.announce`.
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import Float, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from gpuhub_spawner.storage.db import Base, UTCDateTime, open_engine, utcnow


class UserNotice(Base):
    """Something a user must be told on the hub's pages (e.g. their server stopped while the
    hub was down); kept until their next start of that server."""

    __tablename__ = "gpuhub_user_notice"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    server: Mapped[str] = mapped_column(String(255), primary_key=True)
    message: Mapped[str] = mapped_column(String(1000))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: "notice" (shown to the user) or "starting" (a start under way in hub process ``process``)
    kind: Mapped[str] = mapped_column(String(16), default="notice")
    process: Mapped[str] = mapped_column(String(128), default="")


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


def read_notices(session: Session) -> dict[str, list[tuple[str, str]]]:
    """The notices to show (not starts under way): user -> [(server, message)], oldest first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for row in session.scalars(select(UserNotice).where(UserNotice.kind == "notice").order_by(UserNotice.at)):
        found.setdefault(row.user, []).append((row.server, row.message))
    return found


class UserNotices:
    """The user-notice operations of a store with a ``_session`` factory (the usage ledger's,
    written by the hub; the notice store's, read for the hub's pages)."""

    _session: sessionmaker[Session]

    def set_notice(self, user: str, server: str, message: str, kind: str = "notice", process: str = "") -> None:
        with self._session.begin() as session:
            row = session.get(UserNotice, (user, server)) or UserNotice(user=user, server=server)
            row.message, row.at, row.kind, row.process = message[:1000], utcnow(), kind, process
            session.add(row)

    def mark_starting(self, user: str, server: str, process: str) -> None:
        """A start of ``user``'s ``server`` is under way in hub process ``process``."""
        self.set_notice(user, server, "", kind="starting", process=process)

    def expire_starting(self, process: str, message: str) -> int:
        """Starts under way in another (dead) hub process never finished: tell their users.

        ``message`` may name ``{server}``.  Returns how many users are told.
        """
        with self._session.begin() as session:
            query = select(UserNotice).where(UserNotice.kind == "starting", UserNotice.process != process)
            rows = list(session.scalars(query))
            for row in rows:
                row.kind, row.at = "notice", utcnow()
                row.message = message.format(server=row.server or "default")[:1000]
            return len(rows)

    def clear_notice(self, user: str, server: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(UserNotice).where(UserNotice.user == user, UserNotice.server == server))

    def notices(self) -> dict[str, list[tuple[str, str]]]:
        """Every user's notices: user -> [(server, message)], oldest first."""
        with self._session() as session:
            return read_notices(session)


class NoticeStore(UserNotices):
    """Cull warnings, keep-alives and user notices in the database at ``url`` (migrated to the
    newest schema when opened)."""

    def __init__(self, url: str):
        self.engine = open_engine(url)
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

    def keepalives(self) -> dict[tuple[str, str], float]:
        with self._session() as session:
            return {(r.user, r.server): r.at for r in session.scalars(select(KeepaliveRow))}

    def keepalive(self, user: str, server: str, at: float | None = None, running: set[str] | None = None) -> None:
        """Record a keep-alive; with ``running`` (the user's running servers), the user's rows of
        other servers are dropped, so a user never holds more rows than running servers."""
        with self._session.begin() as session:
            if running is not None:
                session.execute(
                    delete(KeepaliveRow).where(
                        KeepaliveRow.user == user, KeepaliveRow.server.not_in(sorted(running | {server}))
                    )
                )
            row = session.get(KeepaliveRow, (user, server)) or KeepaliveRow(user=user, server=server)
            row.at = time.time() if at is None else at
            session.add(row)

    def forget_keepalive(self, user: str, server: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(KeepaliveRow).where(KeepaliveRow.user == user, KeepaliveRow.server == server))

    def dispose(self) -> None:
        self.engine.dispose()
