"""A throwaway PostgreSQL server for tests: the Debian packages' binaries, a temp dir, a free port.

Usage in a test module::

    from pg import postgres_fixture, create_database

    postgres_url = postgres_fixture()        # session-scoped fixture named "postgres_url"

    def test_x(postgres_url):
        url = create_database(postgres_url, "test_x")

Without PostgreSQL (``apt-get install postgresql``) the tests skip, except in CI (env ``CI`` is
1/true/yes), where a missing server is a failure.  Running as root, the cluster runs as the
``postgres`` OS user, since ``initdb`` refuses root.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import free_port
from needs import unavailable

OS_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, else one on PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name))

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bin_dir = Path(initdb).parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def driver() -> str | None:
    """The SQLAlchemy driver name of an importable PostgreSQL DB-API module."""
    for module, name in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return name
    return None


class PostgresCluster:
    """One throwaway cluster; :meth:`start` then :meth:`stop` (which also removes its files)."""

    def __init__(self, bin_dir: Path, driver_name: str):
        self.bin_dir = bin_dir
        self.driver = driver_name
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="gpuhub-pg-"))
        self.data = self.base / "data"
        self.log_file = self.base / "server.log"
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql+{self.driver}://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", OS_USER, "--", *cmd]
            else:
                cmd = ["su", OS_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )

    def _check(self, what: str, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")

    def start(self) -> str:
        if self.as_root:
            shutil.chown(self.base, OS_USER, OS_USER)
        init = ("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        self._check("initdb", self._run(*init, "-E", "UTF8", "--locale=C"))
        for _ in range(3):  # another process may take the free port before the server does
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.base} -F"
            start = ("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60")
            result = self._run(*start, "-o", options)
            if result.returncode == 0:
                return self.url
        self._check("pg_ctl start", result)
        return self.url  # pragma: no cover - _check raised

    def restart(self) -> None:
        """Stop the server (fast: connections are cut) and start it on the same port and data."""
        self._check("pg_ctl restart", self._run("pg_ctl", "restart", "-D", str(self.data), "-m", "fast", "-w",
                                                "-t", "60", "-l", str(self.log_file)))

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", timeout=60)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a cluster, yield it (its ``url``, ``restart()``, ``log_file``), stop and remove it afterwards."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    driver_name = driver()
    if driver_name is None:
        unavailable("no PostgreSQL driver: pip install 'psycopg[binary]'")
    cluster = PostgresCluster(bin_dir, driver_name)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def postgres_server() -> Iterator[str]:
    """Start a cluster, yield its SQLAlchemy URL, stop and remove it afterwards."""
    for cluster in postgres_cluster():
        yield cluster.url


def postgres_fixture(name: str = "postgres_url", scope: str = "session") -> Callable[..., Iterator[str]]:
    """A pytest fixture (assign it at module level) that yields the URL of a throwaway cluster."""
    return pytest.fixture(scope=scope, name=name)(postgres_server)


def create_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server at ``server_url``; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r}: use lowercase letters, digits and _")
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)
