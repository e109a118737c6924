"""``gpuhub upgrade``: a backup proven restorable, then JupyterHub's and gpuhub's migrations.

Order, and why:

1. refuse while a hub runs on the state (a migration under a live hub corrupts it);
2. take a backup, and restore it into scratch databases (a temporary sqlite file, or a
   ``<db>_restoretest`` database on the same PostgreSQL server), comparing every table's row
   count with the manifest: a backup that cannot be restored is found now, not after a failure;
3. ``jupyterhub upgrade-db`` for the hub's tables (JupyterHub's own Alembic revisions; the
   database URL reaches it in a 0600 config file, never on its command line), then gpuhub's
   revisions (:func:`gpuhub_spawner.storage.db.upgrade`) for the ledger's;
4. compare the revisions and row counts before and after, and say what changed.

Any failure after step 2 names the backup and the command that rolls back to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuhub_spawner.ops import archive, databases, local
from gpuhub_spawner.ops import manifest as mf
from gpuhub_spawner.ops.databases import Database
from gpuhub_spawner.ops.manifest import OpsError


class UpgradeFailed(OpsError):
    """The upgrade failed after its backup was taken: :attr:`backup` rolls back."""

    def __init__(self, message: str, backup: Path) -> None:
        super().__init__(message)
        self.backup = backup


@dataclass
class UpgradeReport:
    backup: Path
    lines: list[str] = field(default_factory=list)


def restore_test(loc: local.Locations, path: Path) -> list[str]:
    """Restore the archive ``path`` into scratch databases and compare row counts; what was checked."""
    lines = []
    by_role = {db.role: db for db in loc.databases}
    with local.private_dir(path.parent) as work:
        (work / "x").mkdir(mode=0o700)
        manifest = archive.read(path, work / "x")
        for entry in manifest["databases"]:
            with databases.scratch_copy(by_role[entry["role"]], work) as scratch:
                databases.load(scratch, work / "x" / entry["member"])
                tables, _ = databases.read_state(scratch)
            differences = mf.compare_counts(entry["tables"], tables)
            if differences:
                raise OpsError(f"the backup {path} does not restore the {entry['role']} database as it was: "
                               f"{'; '.join(differences[:6])}. Nothing was upgraded.")
            lines.append(f"restore test of the {entry['role']} database: {mf.summary(tables)}, as in the backup")
    return lines


def jupyterhub_upgrade_db(db: Database) -> str:
    """Run ``jupyterhub upgrade-db`` on ``db``; its output."""
    exe = shutil.which("jupyterhub", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        raise OpsError("jupyterhub is not installed where gpuhub is: install gpuhub's hub dependencies")
    with tempfile.TemporaryDirectory(prefix="gpuhub-upgrade-") as tmp:
        config = Path(tmp) / "upgrade_config.py"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"c.JupyterHub.db_url = {db.url!r}\n")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run([exe, "upgrade-db", "-f", str(config)], cwd=tmp, env=env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    if result.returncode != 0:
        raise OpsError(f"jupyterhub upgrade-db failed: {result.stderr.strip()[-800:]}")
    return result.stderr


def gpuhub_migrations(db: Database) -> str:
    """Bring gpuhub's tables of ``db`` to the newest revision; that revision."""
    from sqlalchemy.exc import SQLAlchemyError

    from gpuhub_spawner.storage.db import SchemaError, make_engine, upgrade

    engine = make_engine(db.url)
    try:
        return upgrade(engine)
    except (SchemaError, SQLAlchemyError) as e:
        raise OpsError(f"gpuhub's migrations failed on {db.where()}: {str(e)[:600]}") from None
    finally:
        engine.dispose()


def _migrate(loc: local.Locations) -> None:
    for db in loc.databases:
        if db.role in ("hub", "hub+usage"):
            jupyterhub_upgrade_db(db)
        if db.role in ("usage", "hub+usage"):
            gpuhub_migrations(db)


def changes(before: dict[str, Any], after: dict[str, tuple[dict[str, int], dict[str, str]]]) -> list[str]:
    """What the migrations changed: revisions, new tables, tables whose row counts moved."""
    lines = []
    for entry in before["databases"]:
        tables, revs = after[entry["role"]]
        for name in sorted(set(entry["revision"]) | set(revs)):
            old, new = entry["revision"].get(name, "none"), revs.get(name, "none")
            what = "JupyterHub's schema" if name == "hub" else "gpuhub's schema"
            lines.append(f"{what}: {old} -> {new}" if old != new else f"{what}: already at {new}")
        added = sorted(set(tables) - set(entry["tables"]))
        if added:
            lines.append(f"new tables in the {entry['role']} database: {', '.join(added)}")
        moved = mf.compare_counts(entry["tables"], tables)
        lines += [f"the {entry['role']} database's {m}" for m in moved]
        if not moved:
            lines.append(f"every row of the {entry['role']} database kept: {mf.summary(tables)}")
    return lines


def upgrade(loc: local.Locations, out: Path | None = None) -> UpgradeReport:
    """The whole upgrade (see the module's docstring)."""
    local.refuse_if_running(loc, "gpuhub upgrade")
    path, manifest = local.backup(loc, out)
    report = UpgradeReport(path, [f"backed up to {path}"])
    report.lines += restore_test(loc, path)
    try:
        _migrate(loc)
        after = {db.role: databases.read_state(db) for db in loc.databases}
    except OpsError as e:
        raise UpgradeFailed(str(e), path) from None
    report.lines += changes(manifest, after)
    return report
