"""gpuhub's schema under Alembic, against real databases (a sqlite file, a throwaway PostgreSQL).

The upgrade tests build a database with the code of commit 658068d (the last one that made its
tables with ``create_all``, from two declarative bases), extracted with ``git archive`` and run
in its own interpreter; then the code of today opens it, and every row must still be there,
with the same values, read the same way.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from needs import unavailable
from pg import create_database, postgres_fixture
from sqlalchemy import MetaData, create_engine, inspect, select, text

from gpuhub_spawner.storage import db
from gpuhub_spawner.storage.ledger import UsageLedger
from gpuhub_spawner.storage.notices import NoticeStore

postgres_url = postgres_fixture()

REPO = Path(__file__).resolve().parents[2]
LEGACY_COMMIT = "658068d"  # tables made by create_all, two declarative bases, no version table
WRITER = Path(__file__).with_name("legacy_writer.py")
#: the tables the code before migrations made (tests/storage/legacy_writer.py writes them)
LEGACY_TABLES = {"gpuhub_usage", "gpuhub_user_quota", "gpuhub_user_notice", "gpuhub_cull_warning", "gpuhub_keepalive"}
TABLES = LEGACY_TABLES | {"gpuhub_line_wait"}  # 0003
T0 = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def legacy_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages as they were at :data:`LEGACY_COMMIT`."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        unavailable("the upgrade test needs git and the repository's history")
    tree = tmp_path_factory.mktemp("legacy")
    archive = subprocess.run(
        ["git", "archive", LEGACY_COMMIT, "gpuhub_spawner", "hub_services"], cwd=REPO, capture_output=True, check=False
    )
    if archive.returncode != 0:
        unavailable(f"commit {LEGACY_COMMIT} is not in this clone: {archive.stderr.decode()[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.sqlite'}"
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    return create_database(request.getfixturevalue("postgres_url"), f"m_{name}")


def write_with_legacy_code(tree: Path, url: str, *args: str) -> dict:
    """Run :data:`WRITER` with the old packages first on the path; what the old code read back."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, str(WRITER), url, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    read = json.loads(result.stdout.strip().splitlines()[-1])
    assert read["imported_from"].startswith(str(tree)), "the writer ran today's code, not the old one"
    return read


def dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every gpuhub table, read with plain SQL (no gpuhub code), in a fixed order."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine, only=lambda name, _meta: name.startswith("gpuhub_") and name != db.VERSION_TABLE)
        with engine.connect() as conn:
            return {
                name: sorted(conn.execute(select(table)).all(), key=repr) for name, table in sorted(meta.tables.items())
            }
    finally:
        engine.dispose()


def schema(url: str) -> dict[str, object]:
    """The gpuhub tables' columns, primary keys and indexes as the database reports them."""
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        found: dict[str, object] = {}
        for name in sorted(t for t in insp.get_table_names() if t.startswith("gpuhub_")):
            columns = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)]
            indexes = sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]), where(ix))
                for ix in insp.get_indexes(name)
            )
            pk = insp.get_pk_constraint(name)
            found[name] = (columns, pk["name"], pk["constrained_columns"], indexes)
        return found
    finally:
        engine.dispose()


def where(index: dict) -> str:
    """A partial index's condition as text (reflected as a clause object)."""
    return " ".join(str(clause) for _key, clause in sorted(index.get("dialect_options", {}).items()))


def revision_rows(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text(f"SELECT version_num FROM {db.VERSION_TABLE}"))]
    finally:
        engine.dispose()


@pytest.fixture
def opened() -> Iterator[list]:
    """Stores a test opens with today's code; disposed afterwards."""
    stores: list = []
    yield stores
    for store in stores:
        store.dispose()


def test_a_database_made_by_the_old_code_is_migrated_and_keeps_every_row(legacy_tree, db_url, opened):
    old = write_with_legacy_code(legacy_tree, db_url)
    before = dump(db_url)
    assert set(before) == LEGACY_TABLES and all(before.values()), before  # rows in every table
    assert len(before["gpuhub_usage"]) == 4 and sum(row.ended_at is None for row in before["gpuhub_usage"]) == 2
    assert revision_rows_or_none(db_url) is None

    ledger = UsageLedger(db_url)
    store = NoticeStore(db_url)
    opened.extend([ledger, store])
    assert revision_rows(db_url) == [db.head_revision()]
    after = dump(db_url)
    assert {name: rows for name, rows in after.items() if name in before} == before  # every row, every value
    assert after["gpuhub_line_wait"] == []  # the tables of later revisions, made empty

    # today's code reads what the old code wrote exactly as the old code did
    open_now = [{**a, "started_at": a["started_at"].isoformat()} for a in ledger.open_allocations()]
    assert open_now == old["open"]
    assert ledger.gpu_seconds("ada", T0 - timedelta(hours=1), T0 + timedelta(hours=10)) == old["ada_seconds"]
    assert ledger.gpu_seconds("bob", T0 - timedelta(hours=1), T0 + timedelta(hours=10)) == old["bob_seconds"]
    assert {user: ledger.get_override(user) for user in ("ada", "cy", "nobody")} == old["overrides"]
    assert json.loads(json.dumps(store.notices())) == old["notices"]
    warnings = sorted([r.user, r.server, r.reason, r.warned_at, r.cull_at, r.message] for r in store.warnings().values())
    assert warnings == old["warnings"]
    assert sorted([*key, at] for key, at in store.keepalives().items()) == old["keepalives"]
    # ... and goes on from there: the start cut off by a dead hub, a new interval
    assert ledger.expire_starting("hub-now", "Start {server} again") == 1
    ledger.start("ada", "", "GPU-3", "full", "jupyter-ada", now=T0 + 5 * timedelta(hours=1))
    assert len(ledger.open_allocations()) == 3


def revision_rows_or_none(url: str) -> list[str] | None:
    """:func:`revision_rows`, or ``None`` when there is no version table."""
    engine = create_engine(url)
    try:
        has = inspect(engine).has_table(db.VERSION_TABLE)
    finally:
        engine.dispose()
    return revision_rows(url) if has else None


def schema_of_fresh(like: str) -> dict[str, object]:
    """The schema today's code gives a new database of the same kind as ``like``."""
    if like.startswith("sqlite"):
        fresh = like.replace("usage.sqlite", "fresh.sqlite")
    else:
        fresh = create_database(like.rsplit("/", 1)[0] + "/postgres", "m_fresh_schema")
    db.open_engine(fresh).dispose()
    return schema(fresh)


def test_an_old_database_ends_with_the_schema_of_a_new_one(legacy_tree, db_url):
    write_with_legacy_code(legacy_tree, db_url)
    db.open_engine(db_url).dispose()
    assert schema(db_url) == schema_of_fresh(db_url)


def test_an_old_hub_only_database_gets_the_tables_it_never_made(legacy_tree, db_url, opened):
    old = write_with_legacy_code(legacy_tree, db_url, "hub-only")  # a hub without the culler
    before = dump(db_url)
    assert set(before) == {"gpuhub_usage", "gpuhub_user_quota", "gpuhub_user_notice"}
    store = NoticeStore(db_url)
    opened.append(store)
    after = dump(db_url)
    assert set(after) == TABLES and after["gpuhub_cull_warning"] == after["gpuhub_keepalive"] == []
    assert {name: rows for name, rows in after.items() if name in before} == before
    assert json.loads(json.dumps(store.notices())) == old["notices"]
    store.keepalive("ada", "", at=5.0)
    assert store.keepalives() == {("ada", ""): 5.0}


def test_the_models_match_the_migrated_schema(db_url):
    """A model changed without a revision fails here (Alembic's autogenerate finds the difference)."""
    engine = db.open_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_name": lambda name, type_, _p: type_ != "table" or name in TABLES}
            )
            assert compare_metadata(context, db.Base.metadata) == []
    finally:
        engine.dispose()


def test_one_metadata_holds_every_gpuhub_table():
    from gpuhub_spawner.storage import ledger, notices

    assert set(db.Base.metadata.tables) == TABLES
    for model in (ledger.UsageInterval, ledger.UserQuota, ledger.LineWaitRow, notices.UserNotice, notices.WarningRow,
                  notices.KeepaliveRow):
        assert model.metadata is db.Base.metadata, model


BASE_MAKERS = {"DeclarativeBase", "DeclarativeBaseNoMeta", "declarative_base", "registry"}


def _declarative_bases(path: Path) -> list[str]:
    """Where ``path`` makes a declarative base: a class deriving from one of SQLAlchemy's base
    classes, or a call of ``declarative_base()`` / ``registry()``."""

    def name(node: ast.AST) -> str:
        return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef) and any(name(base) in BASE_MAKERS for base in node.bases):
            found.append(f"{path.relative_to(REPO)}:{node.name}")
        elif isinstance(node, ast.Call) and name(node.func) in BASE_MAKERS:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_other_declarative_base_anywhere():
    """Two bases on one database was the problem: every gpuhub table derives from storage's one."""
    found = [where for package in ("gpuhub_spawner", "hub_services") for path in sorted((REPO / package).rglob("*.py"))
             for where in _declarative_bases(path)]
    assert found == ["gpuhub_spawner/storage/db.py:Base"]


RACE = textwrap.dedent(
    """
    import sys, time
    from gpuhub_spawner.storage.db import open_engine
    go = float(sys.argv[2])
    time.sleep(max(0.0, go - time.time()))
    open_engine(sys.argv[1]).dispose()
    """
)


@pytest.mark.parametrize("start", ["fresh", "legacy"])
def test_processes_starting_at_once_migrate_once(legacy_tree, db_url, start):
    if start == "legacy":
        write_with_legacy_code(legacy_tree, db_url)
    before = dump(db_url)
    go = time.time() + 4  # past every interpreter's imports: they all open the database at once
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, db_url, str(go)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1].decode()[-2000:] for p in racers]
    assert [p.returncode for p in racers] == [0] * len(racers), errors
    assert revision_rows(db_url) == [db.head_revision()]
    after = dump(db_url)
    assert set(after) == TABLES
    assert {name: rows for name, rows in after.items() if name in before} == before


def test_threads_of_one_process_migrate_several_databases_at_once(tmp_path):
    """Alembic keeps the running migration in module globals: one at a time per process."""
    urls = [f"sqlite:///{tmp_path / f'usage{i}.sqlite'}" for i in range(8)]
    start = threading.Barrier(len(urls))

    def open_one(url: str) -> None:
        start.wait()
        db.open_engine(url).dispose()

    with ThreadPoolExecutor(len(urls)) as pool:
        list(pool.map(open_one, urls))  # re-raises any thread's error
    for url in urls:
        assert revision_rows(url) == [db.head_revision()]
        assert set(dump(url)) == TABLES


def test_a_database_from_a_newer_gpuhub_is_refused_with_what_to_do(db_url):
    db.open_engine(db_url).dispose()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {db.VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(db.SchemaError, match="9999_from_the_future.*upgraded by a newer gpuhub.*restore"):
        UsageLedger(db_url)


def test_an_up_to_date_database_is_not_migrated_again(db_url, caplog):
    db.open_engine(db_url).dispose()
    caplog.set_level("INFO")
    caplog.clear()  # only the second open counts (an earlier test may have set alembic's level)
    db.open_engine(db_url).dispose()
    assert not [r for r in caplog.records if r.name.startswith("alembic")]
    assert "is at revision" not in caplog.text


def test_open_intervals_are_found_by_index_in_sqlite(tmp_path):
    """Revision 0002's index: the exporter's read of recent intervals does not scan the ledger."""
    ledger = UsageLedger(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    try:
        for i in range(50):
            ledger.start("ada", "", "GPU-0", "full", f"h{i}", now=T0 + timedelta(minutes=i))
            ledger.end(f"h{i}", now=T0 + timedelta(minutes=i, seconds=30))
        plans: list[str] = []
        from sqlalchemy import event

        @event.listens_for(ledger.engine, "before_cursor_execute", retval=True)
        def explain(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("SELECT") and "gpuhub_usage" in statement:
                plans.extend(row[-1] for row in cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters))
            return statement, parameters

        ledger.intervals_since(T0 + timedelta(minutes=45))
        assert plans and not any(plan.startswith("SCAN gpuhub_usage") for plan in plans), plans
    finally:
        ledger.dispose()


def test_a_database_taken_back_to_the_previous_revision_upgrades_again(db_url):
    """What tests/ops/test_stack_ops.py does before v0.1.0's code writes its rows: Alembic's
    downgrade to that release's newest revision, then today's code opens it and upgrades."""
    from alembic import command

    from gpuhub_spawner.storage.ledger import WaitRecord

    ledger = UsageLedger(db_url)
    ledger.start("ada", "", "GPU-0", "gpu", "h1", now=T0)
    ledger.record_wait(WaitRecord("ada", "", "gpu", T0, T0, "unit", 1, None, None, 0))
    ledger.dispose()
    command.downgrade(db.alembic_config(db_url), "0002_usage_ended_at_index")
    assert revision_rows(db_url) == ["0002_usage_ended_at_index"] and "gpuhub_line_wait" not in dump(db_url)
    ledger = UsageLedger(db_url)  # upgraded again: the usage row kept, the waits' table back, empty
    try:
        assert revision_rows(db_url) == [db.head_revision()]
        assert len(ledger.open_allocations()) == 1 and ledger.waits_since(T0 - timedelta(days=1)) == []
    finally:
        ledger.dispose()
