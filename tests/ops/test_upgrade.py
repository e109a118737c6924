"""``gpuhub upgrade`` from the previous release (git tag v0.1.0): every row kept, the hub starts on it.

The state is written by v0.1.0's own code (``git archive v0.1.0`` first on ``PYTHONPATH``, run in
its own interpreter: JupyterHub's ORM for users, groups with quotas and named servers' state,
v0.1.0's ledger for usage rows); today's ``gpuhub upgrade`` then migrates it, and every row of
every table must be there after with the same values, and a real hub must start on it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import State, gpuhub
from harness import HubProcess
from needs import unavailable

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "v0.1.0"
#: the release's commit, for a clone made without tags
PREVIOUS_COMMIT = "ff4d4adfafc9815f885dc759334c1f49b0baabfc"
FILL = Path(__file__).with_name("statefill.py")


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpuhub as released in :data:`PREVIOUS`."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        unavailable("the upgrade test needs git and the repository's history")
    tree = tmp_path_factory.mktemp("previous")
    for rev in (PREVIOUS, PREVIOUS_COMMIT):
        archive = subprocess.run(["git", "archive", rev, "gpuhub_spawner", "hub_services"], cwd=REPO,
                                 capture_output=True, check=False)
        if archive.returncode == 0:
            break
    if archive.returncode != 0:
        unavailable(f"neither the tag {PREVIOUS} nor its commit is in this clone: {archive.stderr.decode()[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def fill_with_previous(tree: Path, state: State) -> None:
    state.data_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, str(FILL), state.hub_url, state.usage_url],
                            env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["imported_from"].startswith(str(tree))
    state.add_secrets()


def same_rows(before: dict, after: dict) -> None:
    """Every row before is there after with the same values (a migration may only add columns or tables)."""
    for db, tables in before.items():
        for table, rows in tables.items():
            if table.endswith("alembic_version"):
                continue
            assert table in after[db], f"{db}: table {table} is gone"
            assert len(after[db][table]) == len(rows), (db, table)
            for row in rows:
                assert any(row.items() <= new.items() for new in after[db][table]), (db, table, row)


def test_upgrade_from_previous_release_keeps_every_row_and_the_hub_starts(
    previous_tree: Path, tmp_path: Path
) -> None:
    state = State(tmp_path / "hub")
    fill_with_previous(previous_tree, state)
    before = state.rows()
    assert before["hub"]["users"] and before["hub"]["spawners"] and before["usage"]["gpuhub_usage"]
    result = gpuhub("upgrade", *state.args())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restore test of the hub database" in result.stdout and "restore test of the usage database" in result.stdout
    assert "every row of the hub database kept" in result.stdout
    backup = Path(result.stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert backup.is_file() and stat.S_IMODE(backup.stat().st_mode) == 0o600
    same_rows(before, state.rows())
    hub = HubProcess(state.root)
    hub.start(env={"GPUHUB_CONFIG": str(state.config)})
    try:
        users = {u["name"]: u for u in hub.api("GET", "/users").json()}
        assert {"ada", "bob", "cy"} <= set(users)
        assert set(users["ada"]["servers"]) == set()  # no server runs: their state is kept, not served
        group = hub.api("GET", "/groups/workshop").json()
        assert group["properties"] == {"max_gpu_units": 2, "gpu_hours_per_period": 7.5}
    finally:
        hub.stop()


def test_failed_migration_keeps_the_backup_and_prints_the_roll_back(new_state) -> None:
    state = new_state()
    state.fill()
    usage = sqlite3.connect(state.data_dir / "gpuhub-usage.sqlite")
    usage.execute("UPDATE gpuhub_alembic_version SET version_num = '9999_from_a_newer_gpuhub'")
    usage.commit()
    usage.close()
    before = state.rows()
    failed = gpuhub("upgrade", *state.args())
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED" in failed.stderr and "9999_from_a_newer_gpuhub" in failed.stderr
    roll_back = failed.stderr.strip().splitlines()[-1].strip()
    assert roll_back.startswith("gpuhub restore ") and roll_back.endswith(" --yes")
    backup = Path(roll_back.split()[2])
    assert backup.is_file()
    done = gpuhub(*roll_back.split()[1:])
    assert done.returncode == 0, done.stderr
    assert state.rows() == before
