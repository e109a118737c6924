"""Pooled database connections are checked only when they sat idle (gpuhub_spawner/storage/dbping.py).

A real PostgreSQL logs every statement it is sent, so the tests count the checks it received.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from jupyterhub import orm
from pg import PostgresCluster, postgres_cluster
from sqlalchemy import create_engine, exc, select, text

from gpuhub_spawner.storage import dbping

CHECK = re.compile(r"LOG:\s+(?:statement|execute [^:]*): SELECT 1\s*$", re.M)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    for c in postgres_cluster():
        engine = create_engine(c.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("ALTER SYSTEM SET log_statement = 'all'"))
            conn.execute(text("SELECT pg_reload_conf()"))
        engine.dispose()
        yield c


def checks_after(cluster: PostgresCluster, offset: int) -> int:
    return len(CHECK.findall(cluster.log_file.read_text(errors="replace")[offset:]))


def hub_transactions(url: str, n: int) -> None:
    """What the hub does all day: short session transactions, one after another."""
    db = orm.new_session_factory(url)()
    try:
        for i in range(n):
            db.add(orm.Group(name=f"group-{i}"))
            db.commit()
            assert db.query(orm.Group).count() == i + 1
    finally:
        db.get_bind().dispose()
        db.close()


def test_the_hubs_session_does_not_check_a_connection_it_used_a_moment_ago(cluster, monkeypatch):
    # JupyterHub's own check, for comparison: one SELECT 1 before every transaction. Another test
    # in this process may have loaded jupyterhub_config.py, which replaced it for the process.
    monkeypatch.setattr(orm, "register_ping_connection", dbping.jupyterhubs_check or orm.register_ping_connection)
    monkeypatch.setattr(dbping, "jupyterhubs_check", None)
    assert orm.register_ping_connection is not dbping.ping_when_idle
    offset = cluster.log_file.stat().st_size
    hub_transactions(cluster.url, 10)
    assert checks_after(cluster, offset) >= 10, "JupyterHub's own check no longer runs per transaction"

    assert dbping.use_for_jupyterhub()
    own = dbping.jupyterhubs_check
    assert dbping.use_for_jupyterhub()  # a second load of the config keeps JupyterHub's check to hand
    assert dbping.jupyterhubs_check is own is not dbping.ping_when_idle
    engine = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DELETE FROM groups"))
    engine.dispose()
    offset = cluster.log_file.stat().st_size
    hub_transactions(cluster.url, 10)
    assert checks_after(cluster, offset) == 0


def test_a_connection_idle_past_the_limit_is_replaced_after_the_server_restarted(cluster):
    checked = create_engine(cluster.url)
    dbping.ping_when_idle(checked, idle=0.2)
    unchecked = create_engine(cluster.url)
    for engine in (checked, unchecked):
        with engine.connect() as conn:  # each pool now holds a connection
            assert conn.scalar(select(1)) == 1
    cluster.restart()
    time.sleep(0.3)
    try:
        with checked.connect() as conn:
            assert conn.scalar(select(2)) == 2  # the dead connection was found and replaced
        with pytest.raises(exc.OperationalError):  # without the check, the first statement fails
            with unchecked.connect() as conn:
                conn.scalar(select(2))
    finally:
        checked.dispose()
        unchecked.dispose()


def test_without_the_function_to_replace_jupyterhub_keeps_its_own_check(monkeypatch):
    monkeypatch.delattr(orm, "register_ping_connection")
    assert dbping.use_for_jupyterhub() is False
