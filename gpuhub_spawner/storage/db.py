"""gpuhub's database: one declarative base, engines for sqlite and PostgreSQL, and migrations.

Every gpuhub table (the usage ledger, quota overrides, notices, cull warnings, keep-alives)
is declared on :class:`Base`, so one ``MetaData`` describes the whole schema.  The schema is
owned by Alembic revisions in ``migrations/versions`` (inside this package), recorded in the
version table ``gpuhub_alembic_version``: a name of its own, so gpuhub's tables may share a
database with JupyterHub's (whose Alembic uses ``alembic_version``).

Every process that opens the database (hub, culler, admin, exporter) calls :func:`open_engine`,
which brings the schema to the newest revision before anything else touches it:

- a fresh database gets every table;
- a database made before migrations existed (by ``create_all``, no version table) is adopted:
  the baseline revision creates only the tables it lacks, then the later revisions run, and
  every row stays;
- a database already at the newest revision costs one small read.

Processes starting at once are serialized by one lock per database (sqlite: a write
transaction, ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock), and each runs its
revisions inside it, so the second finds the work done.  Other backends get no lock: start
one process first.

A schema change is a new revision, made against a scratch database at the newest revision::

    from alembic import command
    from gpuhub_spawner.storage.db import alembic_config
    command.revision(alembic_config("sqlite:////tmp/scratch.sqlite"), "what changes", autogenerate=True)

then read and edit the generated file (and test it in ``tests/storage/test_migrations.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, Dialect, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from gpuhub_spawner.storage.dbping import ping_when_idle

log = logging.getLogger(__name__)

#: Alembic's version table for gpuhub's revisions (JupyterHub's own is ``alembic_version``).
VERSION_TABLE = "gpuhub_alembic_version"
#: Where the revisions are: shipped inside the package.
MIGRATIONS = Path(__file__).with_name("migrations")
#: Every gpuhub table starts with this; migrations and comparisons ignore other tables.
TABLE_PREFIX = "gpuhub_"
#: PostgreSQL advisory lock key that serializes migrations of one database.
_PG_LOCK_KEY = 0x67707568  # "gpuh"
#: Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``):
#: one migration at a time in this process, whichever thread opens a database.
_ALEMBIC = threading.Lock()


class SchemaError(RuntimeError):
    """The database's schema cannot be brought to what this gpuhub needs."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (tests may patch this)."""
    return datetime.now(timezone.utc)


def as_utc(when: datetime) -> datetime:
    """``when`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime column that always gives back aware UTC datetimes.

    PostgreSQL stores ``timestamptz``; sqlite has no time zones, so naive UTC is stored there
    (its text form then sorts and compares correctly) and UTC is put back on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    """The one declarative base of every gpuhub table (``storage.ledger``, ``storage.notices``)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``, set up for use from several threads (no schema work: see :func:`open_engine`)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        engine = create_engine(parsed, connect_args={"options": "-c timezone=UTC"})
    else:
        engine = create_engine(parsed)
    ping_when_idle(engine)
    return engine


def open_engine(url: str) -> Engine:
    """An engine for ``url`` whose gpuhub tables are at the newest revision (see the module's docstring)."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


# ---- migrations ----------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for gpuhub's revisions, built in code (no ini file).

    ``url`` is only for Alembic's own commands run by hand (``command.revision`` with
    autogenerate, ``command.history``); :func:`upgrade` hands Alembic its connection instead.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError(f"gpuhub's migrations are missing from {MIGRATIONS}: reinstall gpuhub")
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database at ``conn`` is at; ``None`` when it has no version table.

    Read with plain SQL: Alembic's own reader logs its setup at INFO on every call, and every
    process calls this whenever it opens the database.
    """
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()  # noqa: S608 - constant
    return ",".join(sorted(found)) or None


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Begin the transaction that holds this database's migration lock until it ends."""
    if conn.dialect.name == "sqlite":
        # a write lock from the start: a second process waits (busy_timeout) instead of
        # reading the old schema and then failing on "table already exists"
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    else:
        conn.begin()
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def upgrade(engine: Engine) -> str:
    """Bring the gpuhub tables of ``engine``'s database to the newest revision; that revision.

    Safe to call from several processes at once (see the module's docstring).  Raises
    :class:`SchemaError` when the database is at a revision this code does not know (it was
    migrated by a newer gpuhub).
    """
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return head
    where = engine.url.render_as_string(hide_password=True)
    with _ALEMBIC, engine.connect() as conn, _migration_lock(conn):
        current = current_revision(conn)
        if current == head:  # another process did it while this one waited for the lock
            return head
        _check_known(current, where)
        if current is None:
            found = sorted(t for t in inspect(conn).get_table_names() if t.startswith(TABLE_PREFIX))
            if found:
                log.info("The gpuhub database %s predates migrations (tables %s): adopting it", where, found)
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    log.info("The gpuhub database %s is at revision %s (was %s)", where, head, current or "none")
    return head


def _check_known(revision: str | None, where: str) -> None:
    if revision is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    if revision not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaError(
            f"The gpuhub database {where} is at schema revision {revision!r}, which this gpuhub does "
            f"not know (its newest is {head_revision()!r}): it was upgraded by a newer gpuhub. Run that "
            "version, or restore the database from a backup taken before the upgrade."
        )
