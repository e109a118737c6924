"""A slow quota database does not freeze the hub: the per-user override is read off its event loop.

A real hub and a real PostgreSQL: the quota-override table is locked by another session, so the
hub's lookup waits on the lock (as it would on an overloaded database).  Meanwhile the hub must
go on answering other requests; once the lock goes, the form renders.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
from harness import fake_gpus, render_form
from pg import create_database, postgres_fixture
from sqlalchemy import create_engine, text

from gpuhub_spawner.storage.ledger import UsageLedger

pytestmark = [pytest.mark.docker, pytest.mark.hub]

postgres_url = postgres_fixture()


def _waiting_on_lock(engine, table: str) -> bool:
    """A query of another session is blocked on a lock of ``table``."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid <> pg_backend_pid()"
            )
        ).fetchall()
    return any(table in (row[0] or "") for row in rows)


def test_locked_quota_table_does_not_block_the_hub(docker_client, hub_factory, postgres_url):
    url = create_database(postgres_url, "t_offloop")
    UsageLedger(url).dispose()  # the tables exist before the hub starts
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "ol")}, start=False)
    hub.start(env={"GPUHUB_USAGE_DB_URL": url})
    hub.create_users(["olga"])
    assert "CPU only" in render_form(hub, "olga")  # warm: the ledger is open

    engine = create_engine(url)
    locker = engine.connect()
    try:
        locker.execute(text("LOCK TABLE gpuhub_user_quota IN ACCESS EXCLUSIVE MODE"))
        with cf.ThreadPoolExecutor(1) as pool:
            form = pool.submit(render_form, hub, "olga")
            deadline = time.monotonic() + 30
            while not _waiting_on_lock(engine, "gpuhub_user_quota"):
                assert time.monotonic() < deadline, "the hub never queried the quota table"
                assert not form.done(), form.result()
                time.sleep(0.2)
            # the hub's lookup is stuck on the database: the hub itself still answers
            r = hub.api("GET", "/users/olga", timeout=10)
            assert r.status_code == 200, r.text
            assert not form.done(), "the form did not wait for the database"
            locker.rollback()  # the database recovers
            assert "CPU only" in form.result(timeout=30)
    finally:
        locker.close()
        engine.dispose()
