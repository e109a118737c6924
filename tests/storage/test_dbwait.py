"""The hub waits for its PostgreSQL server at start (gpuhub_spawner/storage/dbwait.py), against a
real server that is down, comes up late, or refuses."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from harness import free_port
from pg import PostgresCluster, postgres_cluster

from gpuhub_spawner.storage.dbwait import DatabaseUnavailable, wait_for_database


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    yield from postgres_cluster()


def pg_ctl(cluster: PostgresCluster, *args: str) -> None:
    result = cluster._run("pg_ctl", *args, "-D", str(cluster.data), "-w", "-t", "60", "-l", str(cluster.log_file))
    assert result.returncode == 0, result.stderr


def test_a_server_that_comes_up_late_is_waited_for_and_said_once(cluster):
    pg_ctl(cluster, "stop", "-m", "fast")
    options = f"-h 127.0.0.1 -p {cluster.port} -k {cluster.base} -F"
    starter = threading.Timer(2.0, pg_ctl, (cluster, "start", "-o", options))
    said: list[str] = []
    starter.start()
    try:
        waited = wait_for_database(cluster.url, timeout=60, say=said.append, pause=0.2)
    finally:
        starter.join()
    assert waited >= 1.5
    assert len(said) == 1 and said[0].startswith(f"gpuhub: waiting for the database at 127.0.0.1:{cluster.port}/postgres"), said
    assert wait_for_database(cluster.url, say=said.append) < 5 and len(said) == 1  # up: no word


def test_a_server_that_refuses_the_hub_stops_it_at_once(cluster):
    missing = cluster.url.rsplit("/", 1)[0] + "/no_such_db"
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"the database at 127\.0\.0\.1:\d+/no_such_db refused the hub: .*"
                                                  r"does not exist"):
        wait_for_database(missing, timeout=60, say=lambda line: None)
    assert time.monotonic() - t0 < 30  # not the whole timeout: waiting would not help


def test_no_server_at_all_is_given_up_on_with_one_line():
    url = f"postgresql+psycopg://gpuhub@127.0.0.1:{free_port()}/gpuhub"
    said: list[str] = []
    with pytest.raises(DatabaseUnavailable, match=r"did not answer within 2 s: .*refused") as raised:
        wait_for_database(url, timeout=2, say=said.append, pause=0.2)
    assert "\n" not in str(raised.value) and len(said) == 1


def test_sqlite_is_not_waited_for(tmp_path):
    assert wait_for_database(f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}", say=pytest.fail) == 0.0
