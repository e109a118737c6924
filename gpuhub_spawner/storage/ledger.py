"""GPU usage ledger: who held which GPU unit when, and per-user quota overrides.

The ledger lives in its own tables (``gpuhub_usage``, ``gpuhub_user_quota``) in a SQL database
given by URL: a sqlite file by default, PostgreSQL for larger hubs, whose schema
:mod:`gpuhub_spawner.storage.db` migrates when the ledger is opened.  It survives hub restarts:
the intervals of servers still running stay open, and the spawner closes the rest with
:meth:`UsageLedger.close_all_except`.

An open interval is never re-used across a stop:

- :meth:`UsageLedger.start` is called for a *new* server.  A holder (a container or service
  name) runs one server at a time, so an interval still open for that holder belongs to a
  server that has stopped: it is closed first, then a new one is opened.  It is closed at the
  best end time known: the stop time of a failed :meth:`UsageLedger.end` when this process
  recorded one (exact), otherwise the new start time (the latest the old server can have
  held the unit; a warning says so).  It is never closed before it started.
- :meth:`UsageLedger.end` that cannot reach the database does not fail the server's stop: it
  keeps the stop time and retries the close at the start of every later ledger call (and on
  :meth:`UsageLedger.retry_pending`), with the recorded stop time, so a database hiccup costs
  the user nothing.  Only a hub restart while the database is still down loses the recorded
  time; the restart's :meth:`UsageLedger.close_all_except` then closes the interval.

Every method is one short transaction and may be called from several threads.  Datetimes are
stored and returned timezone-aware in UTC; a naive datetime passed in is taken to be UTC.

Example::

    ledger = UsageLedger("sqlite:////srv/jupyterhub/gpuhub.sqlite")
    ledger.start("ada", "", "GPU-1f2e/0", "mig-1g-10gb", holder="jupyter-ada")
    used = ledger.gpu_seconds("ada", since, now)
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Float, Index, Integer, String, Text, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from gpuhub_spawner.storage.db import Base, UTCDateTime, as_utc, open_engine, utcnow
from gpuhub_spawner.storage.notices import UserNotices, WarningRow

log = logging.getLogger(__name__)

#: tries of a start that lost a race for its holder's open interval
START_ATTEMPTS = 12


class UsageInterval(Base):
    """One GPU unit held by one server, from ``started_at`` until ``ended_at`` (open: ``None``)."""

    __tablename__ = "gpuhub_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    server: Mapped[str] = mapped_column(String(255))
    unit_id: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(255))
    node: Mapped[str] = mapped_column(String(255), default="")
    holder: Mapped[str] = mapped_column(String(255), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)

    # At most one open interval per holder, even with several threads or hubs writing.
    __table_args__ = (
        Index(
            "ux_gpuhub_usage_open_holder",
            "holder",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )

    def as_dict(self) -> dict[str, Any]:
        fields = ("user", "server", "unit_id", "pool", "node", "holder", "started_at")
        return {name: getattr(self, name) for name in fields}


class UserQuota(Base):
    """A per-user quota override: quota fields as JSON text, and who set them when."""

    __tablename__ = "gpuhub_user_quota"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    values: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(255), default="")


class LineWaitRow(Base):
    """One spawn's finished wait in a pool's line (``outcome``: unit, refused or cancelled), with
    the place and likely-wait range (seconds; None: none told) it was first told."""

    __tablename__ = "gpuhub_line_wait"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(255))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    place: Mapped[int] = mapped_column(Integer)
    told_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    told_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    holds: Mapped[int] = mapped_column(Integer)


class WaitRecord(NamedTuple):
    """A finished wait as plain values."""

    user: str
    server: str
    pool: str
    joined_at: datetime
    ended_at: datetime
    outcome: str
    place: int
    told_low: float | None
    told_high: float | None
    holds: int


def _overlap_seconds(row: UsageInterval | Interval, since: datetime, now: datetime) -> float:
    start = max(row.started_at, since)
    end = min(row.ended_at or now, now)
    return max(0.0, (end - start).total_seconds())


class Interval(NamedTuple):
    """One ledger interval as plain values (what the column-only reads return)."""

    user: str
    server: str
    unit_id: str
    pool: str
    node: str
    holder: str
    started_at: datetime
    ended_at: datetime | None


def usage_seconds_by_user(intervals: Iterable[Interval], since: datetime, now: datetime) -> dict[str, float]:
    """GPU-seconds per user in [since, now] over ``intervals``: the arithmetic of
    :meth:`UsageLedger.usage_by_user`, for intervals read once and used for several periods.

    ``intervals`` must hold every interval that overlaps [since, now] (for example
    :meth:`UsageLedger.intervals_since` of ``since`` or earlier); others are ignored.
    """
    since, now = as_utc(since), as_utc(now)
    usage: dict[str, float] = {}
    for row in intervals:
        if row.started_at < now and (row.ended_at is None or row.ended_at > since):
            usage[row.user] = usage.get(row.user, 0.0) + _overlap_seconds(row, since, now)
    return usage


class PoolHolds(NamedTuple):
    """A pool's holds, for wait estimates (:mod:`gpuhub_spawner.core.waits`)."""

    #: (user, server, started_at) of each unit held now
    open: list[tuple[str, str, datetime]]
    #: seconds each recent finished hold lasted, newest first
    past: list[float]
    #: (user, server) -> when an announced cull stops that server (epoch seconds)
    culls: dict[tuple[str, str], float]


class UsageLedger(UserNotices):
    """The GPU usage ledger in the database at ``url`` (migrated to the newest schema when
    opened), with the user notices the hub writes (:class:`~gpuhub_spawner.storage.notices.UserNotices`)."""

    def __init__(self, url: str):
        self.engine = open_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # holder -> stop time of an end() that could not reach the database (retried later)
        self._pending_ends: dict[str, datetime] = {}
        self._pending_lock = threading.Lock()
        log.debug("GPU usage ledger on %s", self.engine.url.render_as_string(hide_password=True))

    # ---- intervals ------------------------------------------------------------------------

    def start(
        self,
        user: str,
        server: str,
        unit_id: str,
        pool: str,
        holder: str,
        node: str = "",
        now: datetime | None = None,
    ) -> int:
        """Open an interval for a new server of ``holder``; its id.

        An interval still open for ``holder`` is stale (its server stopped): it is closed first
        (see the module's docstring for the end time it gets).  Concurrent starts of one holder
        leave exactly one interval open: the last one.
        """
        when = as_utc(now or utcnow())
        self.retry_pending()
        for attempt in range(START_ATTEMPTS):
            row = UsageInterval(
                user=user,
                server=server,
                unit_id=unit_id,
                pool=pool,
                node=node,
                holder=holder,
                started_at=when,
            )
            try:
                with self._session.begin() as session:
                    stopped = self._close_stale(session, holder, when)
                    session.add(row)
                self._forget_pending(holder, stopped)
                break
            except IntegrityError:
                # another thread or hub opened one for this holder meanwhile: close it too (on
                # sqlite each of n racing starts may lose to the others, so up to n - 1 times)
                if attempt == START_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        log.info("GPU usage started: %s/%s holds %s (%s) as %s", user, server, unit_id, pool, holder)
        return row.id

    def _close_stale(self, session: Session, holder: str, when: datetime) -> datetime | None:
        """Close ``holder``'s open interval(s) before a new one opens at ``when``; the recorded stop used."""
        if session.get_bind().dialect.name == "postgresql":
            # one start per holder at a time, across threads and hubs (sqlite serializes writes)
            session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": "gpuhub_usage:" + holder}
            )
        query = select(UsageInterval).where(UsageInterval.holder == holder, UsageInterval.ended_at.is_(None))
        with self._pending_lock:
            stopped = self._pending_ends.get(holder)
        for row in session.scalars(query.with_for_update()):
            if stopped is not None and row.started_at <= stopped <= when:
                row.ended_at = stopped
                log.info("GPU usage of %s closed at its recorded stop %s", holder, stopped.isoformat())
            else:
                row.ended_at = max(when, row.started_at)
                log.warning(
                    "GPU usage of %s (since %s) was still open at a new start: closed now, its stop is unknown",
                    holder,
                    row.started_at.isoformat(),
                )
        session.flush()
        return stopped

    def _forget_pending(self, holder: str, stopped: datetime | None) -> None:
        with self._pending_lock:
            if stopped is not None and self._pending_ends.get(holder) == stopped:
                del self._pending_ends[holder]

    def _close(self, condition: Any, now: datetime | None) -> int:
        query = update(UsageInterval).where(UsageInterval.ended_at.is_(None), condition)
        with self._session.begin() as session:
            result = session.execute(query.values(ended_at=as_utc(now or utcnow())))
            return int(result.rowcount or 0)

    def end(self, holder: str, now: datetime | None = None) -> int:
        """Close the open interval(s) of ``holder``; how many were closed (0 when none).

        When the database cannot be reached, the stop time is kept and the close retried by
        later calls (:meth:`retry_pending`); this returns 0 and does not raise.
        """
        when = as_utc(now or utcnow())
        try:
            self.retry_pending()
            closed = self._close(UsageInterval.holder == holder, when)
        except (DBAPIError, PoolTimeoutError) as e:
            with self._pending_lock:
                self._pending_ends.setdefault(holder, when)  # the earliest stop is the real one
            log.warning("Could not record the end of GPU usage of %s (%s); it will be retried", holder, e)
            return 0
        if closed:
            log.info("GPU usage ended for %s", holder)
        return closed

    def pending_ends(self) -> dict[str, datetime]:
        """Holders whose end could not be recorded yet, with their stop times."""
        with self._pending_lock:
            return dict(self._pending_ends)

    def retry_pending(self) -> int:
        """Record the ends that failed earlier, each at its own stop time; how many rows closed.

        A row that started after the recorded stop belongs to a newer server and stays open.
        Raises the database's error if it is still unreachable (the ends stay pending).
        """
        with self._pending_lock:
            pending = dict(self._pending_ends)
        closed = 0
        for holder, stopped in pending.items():
            condition = (UsageInterval.holder == holder) & (UsageInterval.started_at <= stopped)
            closed += self._close(condition, stopped)
            self._forget_pending(holder, stopped)
            log.info("GPU usage of %s: its end (%s) is recorded now", holder, stopped.isoformat())
        return closed

    def _settle(self) -> None:
        """Before a read: record pending ends if the database answers again (quietly)."""
        if self._pending_ends:
            try:
                self.retry_pending()
            except (DBAPIError, PoolTimeoutError) as e:
                log.debug("Pending GPU usage ends not recorded yet: %s", e)

    def close_all_except(self, holders: Iterable[str], now: datetime | None = None) -> int:
        """Close every open interval whose holder is not in ``holders`` (after a hub restart)."""
        self.retry_pending()
        closed = self._close(UsageInterval.holder.not_in(set(holders)), now)
        if closed:
            log.info("Closed %d GPU usage interval(s) of servers that are gone", closed)
        return closed

    # ---- reports --------------------------------------------------------------------------

    def _overlapping(self, since: datetime, now: datetime, user: str | None = None) -> list[UsageInterval]:
        query = select(UsageInterval).where(
            UsageInterval.started_at < now,
            UsageInterval.ended_at.is_(None) | (UsageInterval.ended_at > since),
        )
        if user is not None:
            query = query.where(UsageInterval.user == user)
        self._settle()
        with self._session() as session:
            return list(session.scalars(query))

    def gpu_seconds(self, user: str, since: datetime, now: datetime) -> float:
        """GPU-seconds ``user`` used in [since, now]: intervals clipped at both ends, open ones up to now."""
        since, now = as_utc(since), as_utc(now)
        return sum(_overlap_seconds(row, since, now) for row in self._overlapping(since, now, user))

    def spans_of(self, user: str, since: datetime, now: datetime) -> list[tuple[datetime, datetime | None]]:
        """(start, end or None while open) of ``user``'s intervals overlapping [since, now]."""
        since, now = as_utc(since), as_utc(now)
        return [(row.started_at, row.ended_at) for row in self._overlapping(since, now, user)]

    def usage_by_user(self, since: datetime, now: datetime) -> dict[str, float]:
        """GPU-seconds per user in [since, now], for users with any usage in it."""
        since, now = as_utc(since), as_utc(now)
        usage: dict[str, float] = {}
        for row in self._overlapping(since, now):
            usage[row.user] = usage.get(row.user, 0.0) + _overlap_seconds(row, since, now)
        return usage

    def is_open(self, holder: str) -> bool:
        """Whether ``holder`` has an open interval (a server adopted after a hub crash may not)."""
        query = select(UsageInterval.id).where(UsageInterval.holder == holder, UsageInterval.ended_at.is_(None))
        with self._session() as session:
            return session.execute(query.limit(1)).first() is not None

    def pool_holds(self, pool: str, since: datetime, limit: int = 500) -> PoolHolds:
        """``pool``'s open holds, the durations of at most ``limit`` holds that ended after
        ``since`` (newest first), and the culls announced now (the culler's warnings)."""
        since = as_utc(since)
        opened = select(UsageInterval.user, UsageInterval.server, UsageInterval.started_at).where(
            UsageInterval.pool == pool, UsageInterval.ended_at.is_(None))
        ended = (select(UsageInterval.started_at, UsageInterval.ended_at)
                 .where(UsageInterval.pool == pool, UsageInterval.ended_at > since)
                 .order_by(UsageInterval.ended_at.desc()).limit(limit))
        culls = select(WarningRow.user, WarningRow.server, WarningRow.cull_at)
        self._settle()
        with self._session() as session:
            return PoolHolds(
                [(u, srv, as_utc(at)) for u, srv, at in session.execute(opened)],
                [(as_utc(end) - as_utc(start)).total_seconds() for start, end in session.execute(ended)],
                {(u, srv): float(at) for u, srv, at in session.execute(culls)},
            )

    def record_wait(self, wait: WaitRecord) -> None:
        """Keep a finished wait in line (the queue chart and the estimates' error)."""
        with self._session.begin() as session:
            session.add(LineWaitRow(**{**wait._asdict(), "joined_at": as_utc(wait.joined_at),
                                       "ended_at": as_utc(wait.ended_at)}))

    def waits_since(self, since: datetime) -> list[WaitRecord]:
        """The waits that ended after ``since``, oldest end first."""
        query = select(*(getattr(LineWaitRow, name) for name in WaitRecord._fields)).where(
            LineWaitRow.ended_at > as_utc(since)).order_by(LineWaitRow.ended_at, LineWaitRow.id)
        with self._session() as session:
            return [WaitRecord(*row[:3], as_utc(row[3]), as_utc(row[4]), *row[5:]) for row in session.execute(query)]

    def open_allocations(self) -> list[dict[str, Any]]:
        """The open intervals, oldest first: user, server, unit_id, pool, node, holder, started_at."""
        query = select(UsageInterval).where(UsageInterval.ended_at.is_(None))
        self._settle()
        with self._session() as session:
            rows = session.scalars(query.order_by(UsageInterval.started_at, UsageInterval.id))
            return [row.as_dict() for row in rows]

    # ---- column-only reads (no ORM objects: for passes over every holder) -------------------

    _COLUMNS = (
        UsageInterval.user,
        UsageInterval.server,
        UsageInterval.unit_id,
        UsageInterval.pool,
        UsageInterval.node,
        UsageInterval.holder,
        UsageInterval.started_at,
        UsageInterval.ended_at,
    )

    def _intervals(self, condition: Any) -> list[Interval]:
        query = select(*self._COLUMNS).where(condition)
        self._settle()
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(UsageInterval.started_at, UsageInterval.id)).all()
        return [Interval(*row) for row in rows]

    def open_intervals(self) -> list[Interval]:
        """The open intervals, oldest first, as :class:`Interval` tuples: what
        :meth:`open_allocations` returns, read in one column-only query."""
        return self._intervals(UsageInterval.ended_at.is_(None))

    def intervals_since(self, since: datetime) -> list[Interval]:
        """Every open interval and every closed one that ended after ``since``, oldest first,
        in one column-only query (one consistent read): the open allocations and, through
        :func:`usage_seconds_by_user`, the usage of any period starting at or after ``since``."""
        return self._intervals(UsageInterval.ended_at.is_(None) | (UsageInterval.ended_at > as_utc(since)))

    # ---- per-user quota overrides ---------------------------------------------------------

    def get_override(self, user: str) -> dict[str, Any]:
        """The quota fields set for ``user`` alone; ``{}`` when none."""
        with self._session() as session:
            row = session.get(UserQuota, user)
            if row is None:
                return {}
            try:
                values = json.loads(row.values)
            except ValueError:
                log.warning("Ignoring unreadable quota override of %s", user)
                return {}
            return values if isinstance(values, dict) else {}

    def all_overrides(self) -> dict[str, dict[str, Any]]:
        """Every per-user override at once (for passes over many users); unreadable ones are skipped."""
        found: dict[str, dict[str, Any]] = {}
        with self._session() as session:
            for row in session.scalars(select(UserQuota)):
                try:
                    values = json.loads(row.values)
                except ValueError:
                    log.warning("Ignoring unreadable quota override of %s", row.user)
                    continue
                if isinstance(values, dict):
                    found[row.user] = values
        return found

    def set_override(self, user: str, values: Mapping[str, Any], by: str) -> None:
        """Replace the quota override of ``user`` with ``values`` (stored as JSON)."""
        encoded = json.dumps(dict(values), sort_keys=True)
        for attempt in range(2):
            try:
                with self._session.begin() as session:
                    row = session.get(UserQuota, user) or UserQuota(user=user)
                    row.values, row.updated_at, row.updated_by = encoded, utcnow(), by
                    session.add(row)
                break
            except IntegrityError:
                if attempt:  # inserted concurrently twice in a row: give up
                    raise
        log.info("Quota override of %s set by %s: %s", user, by, encoded)

    def delete_override(self, user: str) -> None:
        """Remove the quota override of ``user`` (nothing happens when there is none)."""
        with self._session.begin() as session:
            row = session.get(UserQuota, user)
            if row is not None:
                session.delete(row)
                log.info("Quota override of %s deleted", user)

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()
