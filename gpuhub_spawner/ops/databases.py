"""Consistent copies of a hub's databases, loading them back, and counting their rows.

- sqlite: sqlite3's online backup API copies a consistent snapshot even while the hub writes
  (a bare file copy of a live database in WAL mode can miss committed pages or tear them).
  Loading writes the copy beside the target and renames it over the target, after removing
  the target's WAL and shared-memory files, which would otherwise be replayed onto it.
- PostgreSQL: ``pg_dump`` in its custom format, taken in the snapshot the rows were counted in
  (``pg_export_snapshot``), so the manifest's counts are the dump's; ``pg_restore`` loads it.
  Connection details travel in ``PG*`` environment variables and the password in a 0600
  ``PGPASSFILE``: never on a command line, where any local user could read it.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from gpuhub_spawner.ops.manifest import OpsError

#: Alembic version tables: JupyterHub's and gpuhub's own
VERSION_TABLES = {"hub": "alembic_version", "usage": "gpuhub_alembic_version"}


@dataclass(frozen=True)
class Database:
    """One database of the hub: ``role`` hub, usage, or hub+usage (both in one database)."""

    role: str
    url: str

    @property
    def kind(self) -> str:
        backend = make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise OpsError(f"the {self.role} database is {backend}: backup supports sqlite and PostgreSQL")
        return backend

    @property
    def member(self) -> str:
        return f"db/{self.role}.{'sqlite' if self.kind == 'sqlite' else 'pgdump'}"

    @property
    def sqlite_path(self) -> Path:
        return Path(make_url(self.url).database or "")

    def where(self) -> str:
        """The database's location for messages, without its password."""
        return make_url(self.url).render_as_string(hide_password=True)


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A connection to ``url``; an unreachable database becomes an :class:`OpsError`."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as e:
        where = make_url(url).render_as_string(hide_password=True)
        raise OpsError(f"cannot read the database {where}: {str(e.orig if hasattr(e, 'orig') else e)[:300]}") from None
    finally:
        engine.dispose()


def table_counts(conn: Connection) -> dict[str, int]:
    """Rows of every table ``conn`` sees (in its default schema)."""
    quote = conn.dialect.identifier_preparer.quote
    return {
        name: int(conn.execute(text(f"SELECT count(*) FROM {quote(name)}")).scalar_one())  # noqa: S608 - quoted names
        for name in sorted(inspect(conn).get_table_names())
    }


def revisions(conn: Connection, tables: dict[str, int]) -> dict[str, str]:
    """The Alembic revisions recorded in the database (JupyterHub's ``hub``, gpuhub's ``usage``)."""
    found = {}
    for role, table in VERSION_TABLES.items():
        if table in tables:
            rows = conn.execute(text(f"SELECT version_num FROM {table}")).scalars().all()  # noqa: S608 - constant
            found[role] = ",".join(sorted(rows))
    return found


def read_state(db: Database) -> tuple[dict[str, int], dict[str, str]]:
    """(row counts, revisions) of ``db`` now; a missing sqlite file has none."""
    if db.kind == "sqlite" and not db.sqlite_path.is_file():
        return {}, {}
    with connect(db.url) as conn:
        tables = table_counts(conn)
        return tables, revisions(conn, tables)


# ---- dump ---------------------------------------------------------------------------------


def dump(db: Database, dest: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Write a consistent copy of ``db`` to ``dest``; the row counts and revisions of that copy."""
    if db.kind == "sqlite":
        return _dump_sqlite(db, dest)
    return _dump_postgres(db, dest)


def _dump_sqlite(db: Database, dest: Path) -> tuple[dict[str, int], dict[str, str]]:
    source = db.sqlite_path
    if not source.is_file():
        raise OpsError(
            f"no {db.role} database at {source}: run this where the hub runs (the folder of jupyterhub_config.py), "
            "or name the data directory with --data-dir or the config with --config"
        )
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    except sqlite3.Error as e:
        raise OpsError(f"cannot copy the {db.role} database {source}: {e}") from None
    finally:
        src.close()
    dest.chmod(0o600)
    return read_state(Database(db.role, f"sqlite:///{dest}"))


def _dump_postgres(db: Database, dest: Path) -> tuple[dict[str, int], dict[str, str]]:
    engine = create_engine(db.url).execution_options(isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn, conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            tables = table_counts(conn)
            found = revisions(conn, tables)
            pg_tool(db.url, "pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--file={dest}")
    except SQLAlchemyError as e:
        raise OpsError(f"cannot read the {db.role} database {db.where()}: {str(getattr(e, 'orig', e))[:300]}") from None
    finally:
        engine.dispose()
    dest.chmod(0o600)
    return tables, found


# ---- load ---------------------------------------------------------------------------------


def load(db: Database, source: Path) -> None:
    """Replace the contents of ``db`` by the dump ``source`` (the hub must be stopped)."""
    if db.kind == "sqlite":
        target = db.sqlite_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o600)
        for stale in (f"{target}-wal", f"{target}-shm", f"{target}-journal"):
            Path(stale).unlink(missing_ok=True)
        os.replace(tmp, target)
        return
    pg_tool(db.url, "pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--exit-on-error",
            str(source))


@contextmanager
def scratch_copy(db: Database, workdir: Path) -> Iterator[Database]:
    """An empty database beside ``db`` for a restore test, removed afterwards.

    sqlite: a file in ``workdir``; PostgreSQL: a new database on the same server, made with
    the same credentials (they need the CREATEDB privilege).
    """
    if db.kind == "sqlite":
        yield Database(db.role, f"sqlite:///{workdir / (db.role + '-restore-test.sqlite')}")
        return
    url = make_url(db.url)
    name = f"{url.database}_restoretest"[:63]
    _admin(url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    try:
        yield Database(db.role, url.set(database=name).render_as_string(hide_password=False))
    finally:
        _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(url: URL, *statements: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    except SQLAlchemyError as e:
        raise OpsError(
            f"cannot make a scratch database on {url.render_as_string(hide_password=True)} for the restore "
            f"test ({str(getattr(e, 'orig', e))[:200].strip()}): give the database user CREATEDB (as the "
            f"PostgreSQL superuser: ALTER ROLE {url.username} CREATEDB). Nothing was upgraded."
        ) from None
    finally:
        engine.dispose()


def with_password(url: str, environ: Mapping[str, str]) -> str:
    """``url`` with the password of ``PGPASSWORD_FILE`` when neither it nor ``PGPASSWORD`` has one.

    In the stack the hub's URL has no password: libpq reads ``PGPASSWORD``, which the hub image's
    entrypoint makes from the secret file for the hub; a command run in the container later
    (``docker exec``) only has ``PGPASSWORD_FILE``.  The URL with the password stays in memory.
    """
    parsed = make_url(url)
    path = environ.get("PGPASSWORD_FILE", "").strip()
    if parsed.get_backend_name() != "postgresql" or parsed.password is not None or environ.get("PGPASSWORD") or not path:
        return url
    try:
        password = Path(path).read_text().rstrip("\n")
    except OSError as e:
        raise OpsError(f"PGPASSWORD_FILE names {path}, which cannot be read ({e.strerror}): run as the hub's user") from None
    return parsed.set(password=password).render_as_string(hide_password=False)


# ---- PostgreSQL's client tools --------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if versions:
        return versions[0]
    raise OpsError(f"{name} is not installed: install PostgreSQL's client tools (apt-get install postgresql-client)")


def pg_tool(url: str, name: str, *args: str) -> None:
    """Run ``pg_dump``/``pg_restore`` against ``url``; the password only in a 0600 PGPASSFILE."""
    parsed = make_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or (k == "PGPASSWORD" and parsed.password is None)}
    env.update({"PGHOST": parsed.host or "localhost", "PGDATABASE": parsed.database or "",
                "PGUSER": parsed.username or "postgres", "PGPORT": str(parsed.port or 5432)})
    for key, value in parsed.query.items():
        if key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            env["PG" + key.upper()] = str(value)
    with tempfile.TemporaryDirectory(prefix="gpuhub-pg-") as tmp:
        if parsed.password is not None:
            passfile = Path(tmp) / "pgpass"
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            escaped = str(parsed.password).replace("\\", "\\\\").replace(":", "\\:")
            with os.fdopen(fd, "w") as f:
                f.write(f"*:*:*:*:{escaped}\n")
            env["PGPASSFILE"] = str(passfile)
        db_args = ["--dbname", env["PGDATABASE"]] if name == "pg_restore" else []
        result = subprocess.run([_tool(name), *db_args, *args], env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise OpsError(f"{name} failed for {parsed.render_as_string(hide_password=True)}: {result.stderr.strip()[-600:]}")
