"""Backup and restore of one hub's state on this machine, found where the hub itself finds it.

The places come from gpuhub.yaml exactly as ``jupyterhub_config.py`` computes them:
``hub.data_dir`` (empty: ``./data``, the folder beside jupyterhub_config.py, where the hub
is started), ``hub.db_url`` and ``hub.usage_db_url`` (empty: sqlite files in data_dir). The
secrets are the files at the top of data_dir (the cookie secret, generated passwords) and the
deployment's secrets directory (default ``/etc/gpuhub/secrets``, written by ``gpuhub deploy``).

A restore refuses while a hub runs on that state (its proxy's pid file names a live proxy, or
something answers on the hub's address), refuses to replace state that holds rows or files
unless told to (``--yes``), and afterwards counts every table's rows against the manifest.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpuhub_spawner.ops import archive, databases
from gpuhub_spawner.ops import manifest as mf
from gpuhub_spawner.ops.databases import Database
from gpuhub_spawner.ops.manifest import OpsError

DEFAULT_SECRETS_DIR = "/etc/gpuhub/secrets"
#: data_dir files that are not state to keep: databases (and their journals, and JupyterHub's
#: own pre-upgrade copies), pid files, partial archives
_NOT_DATA = (".sqlite", ".db", "-wal", "-shm", "-journal", ".pid", ".partial")


@dataclass(frozen=True)
class Locations:
    """Where one hub keeps its state."""

    config_path: Path | None
    data_dir: Path
    secrets_dir: Path
    databases: tuple[Database, ...]
    bind_url: str
    proxy_api_port: int

    def data_files(self) -> list[Path]:
        """The state files at the top of data_dir (secrets among them), not the databases."""
        if not self.data_dir.is_dir():
            return []
        return sorted(
            p for p in self.data_dir.iterdir()
            if p.is_file() and not p.is_symlink() and not any(s in p.name for s in _NOT_DATA)
            and mf.safe_member(f"data/{p.name}")
        )

    def secret_files(self) -> list[Path]:
        if not self.secrets_dir.is_dir():
            return []
        return sorted(p for p in self.secrets_dir.iterdir() if p.is_file() and mf.safe_member(f"secrets/{p.name}"))


def locate(config: str | None, data_dir: str | None, secrets_dir: str | None,
           environ: Mapping[str, str] = os.environ) -> Locations:
    """The state of the hub configured by ``config`` (else ``GPUHUB_CONFIG``, else the default)."""
    from gpuhub_spawner.core.config import load_config

    cfg = load_config(config, environ, notify=lambda line: None)
    path = config or environ.get("GPUHUB_CONFIG", "").strip() or None
    data = Path(data_dir or cfg.hub.data_dir or "data").resolve()
    hub_url = databases.with_password(cfg.hub.db_url or f"sqlite:///{data / 'jupyterhub.sqlite'}", environ)
    usage_url = databases.with_password(cfg.hub.usage_db_url or f"sqlite:///{data / 'gpuhub-usage.sqlite'}", environ)
    if hub_url == usage_url:
        dbs: tuple[Database, ...] = (Database("hub+usage", hub_url),)
    else:
        dbs = (Database("hub", hub_url), Database("usage", usage_url))
    for db in dbs:
        db.kind  # noqa: B018 - refuses an unsupported backend before anything is done
    return Locations(
        config_path=Path(path).resolve() if path else None,
        data_dir=data,
        secrets_dir=Path(secrets_dir or environ.get("GPUHUB_SECRETS_DIR") or DEFAULT_SECRETS_DIR),
        databases=dbs,
        bind_url=cfg.hub.bind_url,
        proxy_api_port=cfg.hub.proxy_api_port,
    )


# ---- is a hub running on it? ----------------------------------------------------------------


def running_hub(loc: Locations) -> str | None:
    """Why a hub seems to run on this state (a live proxy, its address answering), or None."""
    for pid_file in sorted(loc.data_dir.glob("*.pid")) if loc.data_dir.is_dir() else []:
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # stale: no such process
        if any(word in cmdline for word in (b"jupyterhub", b"proxy")):
            return f"process {pid} named in {pid_file} is running"
    url = urlsplit(loc.bind_url)
    host = url.hostname if url.hostname not in (None, "", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104 - a test, not a bind
    for where, port in ((host, url.port or (443 if url.scheme == "https" else 80)), ("127.0.0.1", loc.proxy_api_port)):
        try:
            with socket.create_connection((where, port), timeout=1):
                return f"something answers on {where}:{port} (the hub's address or its proxy's API)"
        except OSError:
            continue
    return None


def refuse_if_running(loc: Locations, what: str) -> None:
    reason = running_hub(loc)
    if reason:
        raise OpsError(
            f"a hub is running on this state ({reason}): stop it first (systemctl stop gpuhub, or Ctrl-C the "
            f"jupyterhub process; on a stack use --stack, which scales the hub to 0 and back), then run {what} again"
        )


# ---- backup ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {}
    for name, dist in (("gpuhub", "gpuhub"), ("jupyterhub", "jupyterhub")):
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    from gpuhub_spawner.storage.db import head_revision

    found["gpuhub_schema_head"] = head_revision()
    return found


def default_archive(loc: Locations, now: datetime) -> Path:
    return loc.data_dir / "backups" / f"gpuhub-backup-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


@contextmanager
def private_dir(near: Path) -> Iterator[Path]:
    """A 0700 scratch folder on the same file system as ``near`` when possible."""
    near.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=".gpuhub-ops-", dir=near) as tmp:
        yield Path(tmp)


def backup(loc: Locations, out: Path | None = None, now: datetime | None = None) -> tuple[Path, dict[str, Any]]:
    """Write one archive of the hub's state; its path and manifest."""
    now = now or datetime.now(timezone.utc)
    out = (out or default_archive(loc, now)).resolve()
    with private_dir(out.parent) as staging:
        (staging / "db").mkdir()
        dbs = []
        for db in loc.databases:
            tables, revs = databases.dump(db, staging / db.member)
            dbs.append({"role": db.role, "kind": db.kind, "member": db.member, "tables": tables, "revision": revs})
        copies = [("data", p) for p in loc.data_files()] + [("secrets", p) for p in loc.secret_files()]
        if loc.config_path:
            copies.append(("config", loc.config_path))
        for section, source in copies:
            name = "gpuhub.yaml" if section == "config" else source.name
            (staging / section).mkdir(exist_ok=True, mode=0o700)
            try:
                shutil.copyfile(source, staging / section / name)
            except OSError as e:
                raise OpsError(f"cannot read {source} ({e.strerror}): run the backup as the user that owns it") from None
        files = {str(p.relative_to(staging)): archive.sha256(p) for p in sorted(staging.glob("*/*"))}
        manifest = mf.build(now.strftime("%Y-%m-%dT%H:%M:%SZ"), versions(), dbs, files)
        archive.write(out, staging, manifest)
    return out, manifest


# ---- restore --------------------------------------------------------------------------------


def present_state(loc: Locations) -> list[str]:
    """What state is already there (databases with rows, data files, secrets)."""
    found = []
    for db in loc.databases:
        tables, _ = databases.read_state(db)
        rows = sum(n for t, n in tables.items() if t not in databases.VERSION_TABLES.values())
        if rows:
            found.append(f"the {db.role} database {db.where()} ({rows} rows)")
    found += [str(p) for p in loc.data_files() + loc.secret_files()]
    return found


def restore(loc: Locations, path: Path, yes: bool) -> list[str]:
    """Restore the archive ``path`` onto ``loc``; lines saying what was done."""
    refuse_if_running(loc, "gpuhub restore")
    with private_dir(loc.data_dir) as work:
        manifest = archive.read(path, work)
        problem = mf.layout_problem(manifest["databases"], [(db.role, db.kind) for db in loc.databases])
        if problem:
            raise OpsError(f"refusing {path}: {problem}. Nothing was changed.")
        there = present_state(loc)
        if there and not yes:
            shown = "; ".join(there[:6]) + (f"; and {len(there) - 6} more" if len(there) > 6 else "")
            raise OpsError(
                f"this hub already has state ({shown}). Nothing was changed. To replace it with the backup "
                "(a backup of it first: gpuhub backup), run gpuhub restore again with --yes"
            )
        done = _put_back(loc, manifest, work)
    return done + check_restored(loc, manifest)


def _put_back(loc: Locations, manifest: Mapping[str, Any], work: Path) -> list[str]:
    done = []
    by_role = {db.role: db for db in loc.databases}
    for entry in manifest["databases"]:
        target = by_role[entry["role"]]
        databases.load(target, work / entry["member"])
        done.append(f"restored the {target.role} database {target.where()}")
    members = list(manifest["files"])
    for section, folder in (("data", loc.data_dir), ("secrets", loc.secrets_dir)):
        names = [m.split("/", 1)[1] for m in members if m.startswith(section + "/")]
        if names:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if section == "secrets":
                folder.chmod(0o700)
            for name in names:
                _install(work / section / name, folder / name)
            done.append(f"restored {len(names)} file(s) in {folder}")
    if "config/gpuhub.yaml" in members:
        done.append(_put_config(loc, work / "config" / "gpuhub.yaml"))
    return done


def _install(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)


def _put_config(loc: Locations, source: Path) -> str:
    target = loc.config_path or (Path.cwd() / "gpuhub.yaml")
    try:
        if not target.exists():
            _install(source, target)
            return f"restored the configuration to {target}"
        if target.read_bytes() == source.read_bytes():
            return f"the configuration {target} is the one in the backup"
        aside = target.with_name(target.name + ".from-backup")
        _install(source, aside)
    except OSError as e:
        return f"the configuration in the backup was not written beside {target} ({e.strerror}): it stays in the archive"
    return f"the configuration in the backup differs from {target}: it is in {aside} (compare them)"


def check_restored(loc: Locations, manifest: Mapping[str, Any]) -> list[str]:
    """Open each restored database and compare its row counts with the manifest's."""
    lines = []
    by_role = {db.role: db for db in loc.databases}
    for entry in manifest["databases"]:
        tables, _ = databases.read_state(by_role[entry["role"]])
        differences = mf.compare_counts(entry["tables"], tables)
        if differences:
            raise OpsError(
                f"the restored {entry['role']} database differs from the backup ({'; '.join(differences[:6])}): "
                "do not start the hub; run the restore again and report this"
            )
        lines.append(f"checked the {entry['role']} database: {mf.summary(tables)}, as in the backup")
    return lines
