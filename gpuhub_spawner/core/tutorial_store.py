"""The tutorial store's layout and its atomic steps, shared by the writers of a store.

Two processes write stores of the same layout: the tutorial-sync service on the hub's machine
(``hub_services/tutorial_sync/publish.py``, from Git) and the per-node mirror
(``gpuhub_spawner/node/tutorial_mirror.py``, from the sync service's bundle).  Servers mount
either one read-only and see the same thing::

    STORE/versions/<sha>/   published trees
    STORE/current           relative symlink to versions/<sha>, replaced with one rename
    STORE/.staging/         trees being built, and old versions being deleted
    STORE/.meta/<sha>.json  when each version was published (pruning keeps the newest)

Standard library only: the node agent's image (core + node) runs the mirror.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SUBDIRS = ("versions", ".staging", ".meta")


def current_version(store: Path) -> str | None:
    """The sha ``STORE/current`` points at, or None before the first publish."""
    try:
        target = os.readlink(Path(store) / "current")
    except OSError:
        return None
    sha = target.rpartition("/")[2]
    return sha if SHA_RE.match(sha) else None


def make_layout(store: Path) -> None:
    for sub in SUBDIRS:
        (store / sub).mkdir(mode=0o755, parents=True, exist_ok=True)


@contextmanager
def locked(store: Path) -> Iterator[None]:
    """One writer at a time (an exclusive flock on ``STORE/.lock``)."""
    fd = os.open(store / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_meta(store: Path, sha: str, meta: dict[str, Any]) -> None:
    """Record ``meta`` for version ``sha``, stamped now (so pruning keeps it as the newest)."""
    meta = dict(meta) | {"published_ns": time.time_ns()}
    tmp = store / ".meta" / f".{sha}-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, store / ".meta" / f"{sha}.json")


def read_meta(store: Path, sha: str) -> dict:
    try:
        return json.loads((store / ".meta" / f"{sha}.json").read_text())
    except (OSError, ValueError):
        return {}


def remove(store: Path, path: Path) -> None:
    """Take ``path`` out of sight with one rename, then delete it."""
    doomed = store / ".staging" / f"delete-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def switch(store: Path, sha: str) -> None:
    """Point ``current`` at ``versions/<sha>`` with one rename, durably."""
    tmp = store / f".current-{secrets.token_hex(4)}"
    os.symlink(f"versions/{sha}", tmp)
    os.replace(tmp, store / "current")
    fsync_dir(store)


def prune(store: Path, keep: int, current: str) -> list[str]:
    """Delete all but the newest ``keep`` versions (never ``current``); their shas."""
    versions = [p for p in (store / "versions").iterdir() if SHA_RE.match(p.name) and not p.is_symlink()]
    versions.sort(key=lambda p: read_meta(store, p.name).get("published_ns") or p.lstat().st_mtime_ns)
    versions.reverse()
    pruned = [p.name for p in versions[keep:] if p.name != current]
    for sha in pruned:
        remove(store, store / "versions" / sha)
        (store / ".meta" / f"{sha}.json").unlink(missing_ok=True)
    return pruned


def fsync_dir(path: Path) -> None:
    """Make a rename into or out of ``path`` durable (the directory entry itself)."""
    fd = os.open(path, DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding ``path`` only (syncfs), not every disk of the host."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def commit_staged(store: Path, staging: Path, sha: str) -> None:
    """Make the finished tree ``staging`` the version ``sha``: flushed first, then renamed into
    ``versions/`` (durably), so ``current`` can only ever point at a whole tree."""
    os.chmod(staging, 0o755)
    sync_filesystem(staging)
    os.rename(staging, store / "versions" / sha)
    fsync_dir(store / "versions")
    fsync_dir(store / ".staging")
