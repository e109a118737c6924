"""The GPU usage ledger against real databases: a sqlite file and a throwaway PostgreSQL server."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pg import create_database, postgres_fixture
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from gpuhub_spawner.core.quotas import period_bounds
from gpuhub_spawner.storage.ledger import UsageInterval, UsageLedger, UserQuota

postgres_url = postgres_fixture()

UTC = timezone.utc
T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday
HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    return create_database(request.getfixturevalue("postgres_url"), f"t_{name}")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[UsageLedger]:
    ledger = UsageLedger(ledger_url)
    yield ledger
    ledger.dispose()


def _start(ledger: UsageLedger, holder: str, at: datetime, user: str = "ada", unit: str = "GPU-0") -> int:
    return ledger.start(user, "", unit, "mig-1g-10gb", holder, now=at)


def _rows(ledger: UsageLedger) -> list[UsageInterval]:
    with ledger._session() as session:
        return list(session.scalars(select(UsageInterval).order_by(UsageInterval.id)))


def test_start_then_end_records_one_interval(ledger: UsageLedger) -> None:
    row_id = ledger.start("ada", "big", "GPU-0/1", "mig-3g-40gb", "jupyter-ada-big", node="n1", now=T0)
    assert isinstance(row_id, int)
    assert ledger.open_allocations() == [
        {
            "user": "ada",
            "server": "big",
            "unit_id": "GPU-0/1",
            "pool": "mig-3g-40gb",
            "node": "n1",
            "holder": "jupyter-ada-big",
            "started_at": T0,
        }
    ]
    assert ledger.end("jupyter-ada-big", now=T0 + HOUR) == 1
    assert ledger.open_allocations() == []
    assert ledger.gpu_seconds("ada", T0 - 24 * HOUR, T0 + 2 * HOUR) == 3600
    [row] = _rows(ledger)
    assert (row.started_at, row.ended_at) == (T0, T0 + HOUR)
    assert row.started_at.tzinfo is UTC and row.ended_at.tzinfo is UTC


def test_node_defaults_to_empty(ledger: UsageLedger) -> None:
    ledger.start("ada", "", "GPU-0", "full", "jupyter-ada", now=T0)
    assert ledger.open_allocations()[0]["node"] == ""


def _spans(ledger: UsageLedger) -> list[tuple[datetime, datetime | None]]:
    return [(row.started_at, row.ended_at) for row in _rows(ledger)]


def test_a_new_start_never_reuses_a_stale_open_interval(ledger: UsageLedger) -> None:
    """Item 8: an interval left open (its end never recorded) is closed, not re-used."""
    first = _start(ledger, "jupyter-ada", T0)
    second = _start(ledger, "jupyter-ada", T0 + 2 * HOUR)  # a new server of the same holder
    assert second != first
    # the old server's stop is unknown: closed at the new start, the latest it can have run
    assert _spans(ledger) == [(T0, T0 + 2 * HOUR), (T0 + 2 * HOUR, None)]
    assert [a["started_at"] for a in ledger.open_allocations()] == [T0 + 2 * HOUR]
    ledger.end("jupyter-ada", now=T0 + 3 * HOUR)
    assert ledger.gpu_seconds("ada", T0, T0 + 10 * HOUR) == 3 * 3600


def test_a_stale_interval_is_never_closed_before_it_started(ledger: UsageLedger) -> None:
    _start(ledger, "jupyter-ada", T0 + 5 * HOUR)
    _start(ledger, "jupyter-ada", T0 + HOUR)  # a clock that went backwards
    assert _spans(ledger) == [(T0 + 5 * HOUR, T0 + 5 * HOUR), (T0 + HOUR, None)]


@contextmanager
def database_down(ledger: UsageLedger, url: str) -> Iterator[None]:
    """Make the real database unreachable for ``ledger``, then bring it back.

    sqlite: the file is moved away and a directory put in its place (sqlite cannot open it);
    PostgreSQL: the database refuses connections and the ledger's are terminated.
    """
    ledger.engine.dispose()
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        aside = path.with_name(path.name + ".aside")
        path.rename(aside)
        path.mkdir()
        try:
            yield
        finally:
            path.rmdir()
            aside.rename(path)
        return
    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_a_failed_end_is_recorded_later_at_its_stop_time(ledger: UsageLedger, ledger_url: str) -> None:
    """The probe of item 8: ~2 h of use, an end() that failed, a new start 46 h later."""
    _start(ledger, "jupyter-ada", T0)
    with database_down(ledger, ledger_url):
        assert ledger.end("jupyter-ada", now=T0 + HOUR) == 0  # the server's stop does not fail
        assert ledger.pending_ends() == {"jupyter-ada": T0 + HOUR}
    _start(ledger, "jupyter-ada", T0 + 47 * HOUR)
    ledger.end("jupyter-ada", now=T0 + 48 * HOUR)
    assert _spans(ledger) == [(T0, T0 + HOUR), (T0 + 47 * HOUR, T0 + 48 * HOUR)]
    assert ledger.gpu_seconds("ada", T0 - 24 * HOUR, T0 + 49 * HOUR) == 2 * 3600
    assert ledger.pending_ends() == {}


@pytest.mark.parametrize("then", ["read", "retry", "other-end"])
def test_a_failed_end_is_retried_by_the_next_call(ledger: UsageLedger, ledger_url: str, then: str) -> None:
    _start(ledger, "jupyter-ada", T0)
    _start(ledger, "jupyter-bob", T0, user="bob", unit="GPU-1")
    with database_down(ledger, ledger_url):
        ledger.end("jupyter-ada", now=T0 + HOUR)
        ledger.end("jupyter-ada", now=T0 + 2 * HOUR)  # a second try keeps the first stop time
    if then == "read":  # a budget check sees the right usage at once
        assert ledger.gpu_seconds("ada", T0, T0 + 10 * HOUR) == 3600
    elif then == "retry":
        assert ledger.retry_pending() == 1
    else:
        assert ledger.end("jupyter-bob", now=T0 + 3 * HOUR) == 1
    assert ledger.pending_ends() == {}
    assert ledger.gpu_seconds("ada", T0, T0 + 10 * HOUR) == 3600
    assert [a["holder"] for a in ledger.open_allocations()] == (
        [] if then == "other-end" else ["jupyter-bob"]
    )


def test_a_pending_end_never_closes_a_newer_server(ledger: UsageLedger, ledger_url: str) -> None:
    _start(ledger, "jupyter-ada", T0)
    with database_down(ledger, ledger_url):
        ledger.end("jupyter-ada", now=T0 + HOUR)
    other = UsageLedger(ledger_url)  # another hub process starts the next server meanwhile
    try:
        _start(other, "jupyter-ada", T0 + 2 * HOUR)
    finally:
        other.dispose()
    assert ledger.retry_pending() == 0
    assert _spans(ledger) == [(T0, T0 + 2 * HOUR), (T0 + 2 * HOUR, None)]


def test_end_is_idempotent(ledger: UsageLedger) -> None:
    assert ledger.end("nobody", now=T0) == 0
    _start(ledger, "jupyter-ada", T0)
    assert ledger.end("jupyter-ada", now=T0 + HOUR) == 1
    assert ledger.end("jupyter-ada", now=T0 + 5 * HOUR) == 0
    assert ledger.gpu_seconds("ada", T0, T0 + 10 * HOUR) == 3600


def test_times_in_other_zones_are_stored_as_utc(ledger: UsageLedger) -> None:
    plus_two = timezone(timedelta(hours=2))
    ledger.start("ada", "", "GPU-0", "full", "h", now=datetime(2026, 3, 4, 14, 0, tzinfo=plus_two))
    ledger.end("h", now=datetime(2026, 3, 4, 13, 0))  # naive: UTC
    [row] = _rows(ledger)
    assert row.started_at == T0 and row.started_at.utcoffset() == timedelta(0)
    assert row.ended_at == T0 + HOUR
    assert ledger.gpu_seconds("ada", T0.astimezone(plus_two), T0 + 2 * HOUR) == 3600


# (start, end or None for open), in hours after `since`; `now` is since + 10 h
CLIPPING = [
    pytest.param(-5, -1, 0, id="entirely-before-since"),
    pytest.param(-5, 0, 0, id="ends-at-since"),
    pytest.param(-2, 3, 3, id="straddles-since"),
    pytest.param(2, 5, 3, id="inside"),
    pytest.param(4, None, 6, id="open-up-to-now"),
    pytest.param(-3, None, 10, id="open-straddling-since"),
    pytest.param(8, 15, 2, id="ends-after-now"),
    pytest.param(11, 12, 0, id="after-now"),
    pytest.param(11, None, 0, id="open-starting-after-now"),
]


@pytest.mark.parametrize(("start", "end", "hours"), CLIPPING)
def test_gpu_seconds_clips_intervals(ledger: UsageLedger, start: int, end: int | None, hours: int) -> None:
    since = T0
    _start(ledger, "jupyter-ada", since + start * HOUR)
    if end is not None:
        ledger.end("jupyter-ada", now=since + end * HOUR)
    assert ledger.gpu_seconds("ada", since, since + 10 * HOUR) == hours * 3600


def test_several_units_at_once_add_up(ledger: UsageLedger) -> None:
    _start(ledger, "jupyter-ada-a", T0, unit="GPU-0")
    _start(ledger, "jupyter-ada-b", T0, unit="GPU-1")
    _start(ledger, "jupyter-ada-c", T0 + HOUR, unit="GPU-2")
    _start(ledger, "jupyter-bob", T0, user="bob", unit="GPU-3")
    ledger.end("jupyter-ada-a", now=T0 + 2 * HOUR)
    now = T0 + 3 * HOUR
    assert ledger.gpu_seconds("ada", T0, now) == (2 + 3 + 2) * 3600
    assert ledger.gpu_seconds("bob", T0, now) == 3 * 3600
    assert ledger.gpu_seconds("carol", T0, now) == 0
    assert ledger.usage_by_user(T0 + HOUR, now) == {"ada": (1 + 2 + 2) * 3600, "bob": 2 * 3600}


def test_data_survives_a_restart(ledger_url: str) -> None:
    before = UsageLedger(ledger_url)
    _start(before, "jupyter-ada", T0)
    before.end("jupyter-ada", now=T0 + HOUR)
    running = _start(before, "jupyter-bob", T0 + HOUR, user="bob")
    before.set_override("ada", {"max_gpu_units": 2}, by="admin")
    before.dispose()

    after = UsageLedger(ledger_url)  # opened again: already at the newest revision, nothing changes
    try:
        # a server still running keeps its interval open across the restart
        assert after.open_allocations() == [
            {
                "user": "bob",
                "server": "",
                "unit_id": "GPU-0",
                "pool": "mig-1g-10gb",
                "node": "",
                "holder": "jupyter-bob",
                "started_at": T0 + HOUR,
            }
        ]
        assert running == _rows(after)[-1].id
        assert after.gpu_seconds("ada", T0, T0 + 5 * HOUR) == 3600
        assert after.gpu_seconds("bob", T0, T0 + 5 * HOUR) == 4 * 3600
        assert after.get_override("ada") == {"max_gpu_units": 2}
    finally:
        after.dispose()


def test_close_all_except_closes_servers_that_are_gone(ledger: UsageLedger) -> None:
    for holder in ("a", "b", "c"):
        _start(ledger, holder, T0)
    ledger.end("c", now=T0 + HOUR)
    assert ledger.close_all_except({"b", "not-running"}, now=T0 + 2 * HOUR) == 1
    assert [a["holder"] for a in ledger.open_allocations()] == ["b"]
    assert ledger.close_all_except({"b"}, now=T0 + 3 * HOUR) == 0
    assert ledger.close_all_except(set(), now=T0 + 4 * HOUR) == 1
    assert ledger.open_allocations() == []
    assert ledger.gpu_seconds("ada", T0, T0 + 10 * HOUR) == (2 + 4 + 1) * 3600


def test_overrides_round_trip(ledger: UsageLedger) -> None:
    assert ledger.get_override("ada") == {}
    values = {
        "allowed_profiles": ["mig-1g-10gb", "cpu"],
        "gpu_hours_per_period": 1.5,
        "max_session_hours": None,
    }
    ledger.set_override("ada", values, by="admin")
    assert ledger.get_override("ada") == values
    assert ledger.get_override("bob") == {}

    ledger.set_override("ada", {"period": "day"}, by="teacher")
    assert ledger.get_override("ada") == {"period": "day"}
    with ledger._session() as session:
        row = session.get(UserQuota, "ada")
        assert row is not None and row.updated_by == "teacher"
        assert row.updated_at.tzinfo is UTC

    ledger.delete_override("ada")
    ledger.delete_override("ada")
    assert ledger.get_override("ada") == {}


def _race(workers: int, job) -> list:
    barrier = threading.Barrier(workers)

    def run(i: int):
        barrier.wait(timeout=30)
        return job(i)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


def test_concurrent_start_and_end_from_8_threads(ledger: UsageLedger) -> None:
    def job(i: int) -> None:
        holder = f"jupyter-user{i}"
        _start(ledger, holder, T0, user=f"user{i}", unit=f"GPU-{i}")
        _start(ledger, holder, T0 + HOUR, user=f"user{i}", unit=f"GPU-{i}")  # closes the first
        assert ledger.end(holder, now=T0 + 2 * HOUR) == 1
        _start(ledger, holder, T0 + 3 * HOUR, user=f"user{i}", unit=f"GPU-{i}")

    _race(8, job)
    holders = sorted(a["holder"] for a in ledger.open_allocations())
    assert holders == sorted(f"jupyter-user{i}" for i in range(8))
    with ledger._session() as session:
        counts = session.execute(select(UsageInterval.holder, func.count()).group_by(UsageInterval.holder))
        assert dict(counts.all()) == {f"jupyter-user{i}": 3 for i in range(8)}
    for i in range(8):
        assert ledger.gpu_seconds(f"user{i}", T0, T0 + 4 * HOUR) == 3 * 3600


def test_concurrent_starts_of_one_holder_leave_one_interval_open(ledger: UsageLedger) -> None:
    ids = _race(8, lambda i: _start(ledger, "jupyter-ada", T0 + i * timedelta(seconds=1)))
    assert len(set(ids)) == 8
    assert len(ledger.open_allocations()) == 1
    assert all(end is None or end >= start for start, end in _spans(ledger))


def test_week_budget_counts_from_monday(ledger: UsageLedger) -> None:
    now = T0  # Wednesday 12:00
    since, resets = period_bounds(now, "week")
    assert since == datetime(2026, 3, 2, tzinfo=UTC) and resets == since + timedelta(days=7)
    _start(ledger, "last-week", since - 10 * HOUR)
    ledger.end("last-week", now=since - 8 * HOUR)
    _start(ledger, "over-midnight", since - 2 * HOUR)  # Sunday 22:00 .. Monday 03:00
    ledger.end("over-midnight", now=since + 3 * HOUR)
    _start(ledger, "running", now - 4 * HOUR)
    assert ledger.gpu_seconds("ada", since, now) == (3 + 4) * 3600
    total_since, _ = period_bounds(now, "total")
    assert ledger.gpu_seconds("ada", total_since, now) == (2 + 5 + 4) * 3600


def test_starts_cut_off_by_a_dead_hub_become_notices_and_a_new_start_answers_them(ledger: UsageLedger) -> None:
    ledger.mark_starting("ada", "", "hub-a")  # the hub process that died
    ledger.mark_starting("bob", "big", "hub-a")
    ledger.mark_starting("cy", "", "hub-b")  # a start under way in the hub that runs now
    assert ledger.notices() == {}  # a start under way is nobody's notice
    assert ledger.expire_starting("hub-b", "Start {server} again") == 2
    assert ledger.notices() == {"ada": [("", "Start default again")], "bob": [("big", "Start big again")]}
    assert ledger.expire_starting("hub-b", "again") == 0  # told once
    ledger.mark_starting("ada", "", "hub-b")  # ada starts again: the notice is answered
    ledger.clear_notice("ada", "")
    assert ledger.notices() == {"bob": [("big", "Start big again")]}
    ledger.set_notice("cy", "", "x" * 5000)
    assert len(ledger.notices()["cy"][0][1]) == 1000


def test_pool_holds_for_wait_estimates(ledger: UsageLedger, ledger_url: str) -> None:
    from gpuhub_spawner.storage.notices import NoticeStore

    t0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    for i, minutes in enumerate([10, 20, 30]):  # three finished holds of pool a, one of pool b
        ledger.start(f"u{i}", "", f"U{i}", "a", f"h{i}", now=t0 + timedelta(minutes=i))
        ledger.end(f"h{i}", now=t0 + timedelta(minutes=i + minutes))
    ledger.start("old", "", "U9", "a", "h9", now=t0 - timedelta(days=30))
    ledger.end("h9", now=t0 - timedelta(days=29))  # ended before `since`: not counted
    ledger.start("v", "", "V0", "b", "hb", now=t0)
    ledger.end("hb", now=t0 + timedelta(minutes=5))
    ledger.start("ann", "gpu", "U1", "a", "ha", now=t0 + timedelta(hours=1))  # held now
    holds = ledger.pool_holds("a", since=t0 - timedelta(days=14))
    assert holds.open == [("ann", "gpu", t0 + timedelta(hours=1))]
    assert holds.past == [30 * 60.0, 20 * 60.0, 10 * 60.0]  # newest end first
    assert holds.culls == {}
    assert ledger.pool_holds("a", since=t0 - timedelta(days=14), limit=1).past == [30 * 60.0]
    store = NoticeStore(ledger_url)  # the culler's warnings, in the same database
    store.set_warning("ann", "gpu", "idle", 1.0, 1234.5, "idle")
    assert ledger.pool_holds("a", since=t0).culls == {("ann", "gpu"): 1234.5}
    store.dispose()


def test_finished_waits_are_kept_and_read_back_by_when_they_ended(ledger: UsageLedger) -> None:
    from gpuhub_spawner.storage.ledger import WaitRecord

    t0 = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)
    early = WaitRecord("ann", "", "gpu", t0, t0 + timedelta(minutes=3), "unit", 2, 60.0, 240.0, 12)
    late = WaitRecord("bob", "x", "gpu", t0, t0 + timedelta(minutes=9), "refused", 5, None, None, 0)
    ledger.record_wait(late)
    ledger.record_wait(early)
    assert ledger.waits_since(t0) == [early, late]  # oldest end first, every value as written
    assert ledger.waits_since(t0 + timedelta(minutes=5)) == [late]
