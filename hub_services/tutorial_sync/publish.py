"""Publish one commit of the tutorial repository into the shared store, switched atomically.

Store layout::

    STORE/versions/<sha>/   published trees (files 0644 or 0755, dirs 0755, no .git)
    STORE/current           relative symlink to versions/<sha>, replaced with os.replace
    STORE/.staging/         trees being built, and old versions being deleted
    STORE/.meta/<sha>.json  when each version was published, and what was refused

Every entry of the commit is checked before anything is written; refused
entries are left out and reported, the rest is published. A reader that opens ``current`` once
sees one whole commit; the newest ``keep`` versions stay on disk for readers still holding one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpuhub_spawner.core import tutorial_store as store_ops
from gpuhub_spawner.core.tutorial_store import DIR_FLAGS, current_version
from hub_services.tutorial_sync.gitsource import SHA_RE, GitSource, SyncError, TreeEntry

__all__ = ["CommitLimits", "PublishReport", "SyncError", "current_version", "publish"]

log = logging.getLogger(__name__)

MiB = 1 << 20
MAX_LINK_TARGET = 4095
MAX_LINK_DEPTH = 40
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class PublishReport:
    """What :func:`publish` did; ``published`` is False when ``sha`` was already current."""

    sha: str
    published: bool
    files: int = 0
    bytes: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True)
class CommitLimits:
    """The most a published commit may hold, all files together; a commit over either is refused."""

    max_total_bytes: int = 10 * 1024 * MiB
    max_files: int = 100_000


@dataclass
class _Plan:
    files: list[TreeEntry] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)


# -- validation (no writes) --------------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why ``path`` may not be published, or None when it is a plain relative path."""
    if path.startswith("/"):
        return "absolute path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path component {part!r} is not allowed"
        if part.casefold() == ".git":
            return "paths inside .git are not published"
        if "\0" in part:
            return "NUL in path"
        if len(os.fsencode(part)) > 255:
            return "file name longer than 255 bytes"
    return None


def entry_problem(entry: TreeEntry, max_file_bytes: int) -> str | None:
    """Why ``entry`` may not be published, judged from the tree listing alone."""
    if entry.type == "commit":
        return "submodule skipped (submodules are not published)"
    problem = path_problem(entry.path)
    if problem:
        return problem
    if entry.type != "blob" or not (entry.mode == "120000" or entry.mode.startswith("100")):
        return f"unsupported entry (type {entry.type}, mode {entry.mode})"
    if entry.mode == "120000" and (entry.size or 0) > MAX_LINK_TARGET:
        return "symlink target too long"
    if (entry.size or 0) > max_file_bytes:
        return f"file larger than the limit of {max_file_bytes} bytes ({entry.size} bytes)"
    return None


def escaping_links(links: dict[str, str]) -> set[str]:
    """The links (path -> relative target) that leave the tree or loop when followed.

    Targets are resolved component by component as the kernel would, following links of the
    tree on the way, so ``d/up -> ..`` is fine but ``x -> d/up/..`` leaves the tree.
    """
    memo: dict[str, tuple[str, ...] | None] = {}

    def resolve(link: str, depth: int) -> tuple[str, ...] | None:
        if link not in memo:
            memo[link] = None  # met again while still resolving it: a loop
            parent = link.split("/")[:-1]
            memo[link] = walk(parent, links[link], depth + 1) if depth < MAX_LINK_DEPTH else None
        return memo[link]

    def walk(stack: list[str], target: str, depth: int) -> tuple[str, ...] | None:
        for part in target.split("/"):
            if part == "..":
                if not stack:
                    return None
                stack.pop()
            elif part not in ("", "."):
                stack.append(part)
                if "/".join(stack) in links:
                    resolved = resolve("/".join(stack), depth)
                    if resolved is None:
                        return None
                    stack = list(resolved)
        return tuple(stack)

    return {link for link in links if resolve(link, 0) is None}


def link_problem(target: str) -> str | None:
    if not target or "\0" in target:
        return "symlink with an empty or malformed target"
    if target.startswith("/"):
        return "symlink with an absolute target"
    return None


def limits_problem(entries: list[TreeEntry], limits: CommitLimits) -> str | None:
    """Why a commit whose publishable entries are ``entries`` is too big to publish, or None."""
    total = sum(entry.size or 0 for entry in entries)
    if len(entries) > limits.max_files:
        return f"it has {len(entries)} files, over the limit of {limits.max_files} (max_files)"
    if total > limits.max_total_bytes:
        return f"its files hold {total} bytes, over the limit of {limits.max_total_bytes} bytes (max_total_mb)"
    return None


def _plan(source: GitSource, entries: list[TreeEntry], max_file_bytes: int) -> _Plan:
    plan = _Plan()
    candidates = []
    for entry in entries:
        problem = entry_problem(entry, max_file_bytes)
        if problem:
            plan.refused.append((entry.path, problem))
        else:
            candidates.append(entry)
    dirs = {entry.path.rsplit("/", i)[0] for entry in candidates for i in range(1, entry.path.count("/") + 1)}
    seen: set[str] = set()
    accepted = []
    for entry in candidates:
        if entry.path in dirs or entry.path in seen:
            plan.refused.append((entry.path, "conflicts with another entry of the same name"))
        else:
            seen.add(entry.path)
            accepted.append(entry)
    links = [e for e in accepted if e.mode == "120000"]
    targets = {}
    for entry, blob in zip(links, source.read_blobs(e.oid for e in links)):
        targets[entry.path] = blob.read().decode("utf-8", "surrogateescape")
    escaping = escaping_links({p: t for p, t in targets.items() if not link_problem(t)})
    for path, target in targets.items():
        problem = link_problem(target)
        if problem is None and path in escaping:
            problem = f"symlink target {target!r} leaves the tree or loops"
        if problem:
            plan.refused.append((path, problem))
        else:
            plan.links[path] = target
    plan.files = [e for e in accepted if e.mode != "120000"]
    plan.refused.sort()
    return plan


# -- building a version in staging -------------------------------------------------------------


class _TreeWriter:
    """Create directories, files and symlinks below ``root`` without ever following a symlink."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self.made: set[str] = set()
        self._cached: tuple[str, int] | None = None

    def close(self) -> None:
        if self._cached:
            os.close(self._cached[1])
        os.close(self.root_fd)

    def parent(self, path: str) -> tuple[int, str]:
        """An fd of the directory holding ``path`` (creating it), and the entry's own name."""
        parent, _, name = path.rpartition("/")
        if not parent:
            return self.root_fd, name
        if self._cached and self._cached[0] == parent:
            return self._cached[1], name
        fd = self.root_fd
        prefix = []
        for part in parent.split("/"):
            prefix.append(part)
            key = "/".join(prefix)
            if key not in self.made:
                os.mkdir(part, 0o755, dir_fd=fd)  # FileExistsError: not ours, so never entered
                self.made.add(key)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.fchmod(child, 0o755)
            if fd != self.root_fd:
                os.close(fd)
            fd = child
        if self._cached:
            os.close(self._cached[1])
        self._cached = (parent, fd)
        return fd, name

    def write_file(self, path: str, mode: int, chunks: Iterator[bytes]) -> int:
        dir_fd, name = self.parent(path)
        with open(os.open(name, FILE_FLAGS, 0o600, dir_fd=dir_fd), "wb") as out:
            written = sum(out.write(chunk) for chunk in chunks)
            os.fchmod(out.fileno(), mode)
        return written

    def symlink(self, path: str, target: str) -> None:
        dir_fd, name = self.parent(path)
        os.symlink(target, name, dir_fd=dir_fd)


def _build(source: GitSource, plan: _Plan, staging: Path) -> tuple[int, int]:
    writer = _TreeWriter(staging)
    total = 0
    try:
        for entry, blob in zip(plan.files, source.read_blobs(e.oid for e in plan.files)):
            mode = 0o755 if int(entry.mode, 8) & 0o111 else 0o644
            total += writer.write_file(entry.path, mode, blob.chunks())
        for path, target in plan.links.items():
            writer.symlink(path, target)
    finally:
        writer.close()
    return len(plan.files) + len(plan.links), total


# -- the store ---------------------------------------------------------------------------------


def _write_meta(store: Path, report: PublishReport) -> None:
    store_ops.write_meta(store, report.sha, dataclasses.asdict(report))


def _build_version(
    source: GitSource, sha: str, store: Path, max_file_bytes: int, limits: CommitLimits
) -> PublishReport:
    entries = source.tree(sha)
    too_big = limits_problem([e for e in entries if not entry_problem(e, max_file_bytes)], limits)
    if too_big:
        raise SyncError(
            f"Commit {sha[:12]} was not published: {too_big}. The previous commit stays current; "
            "make the commit smaller or raise the limit."
        )
    plan = _plan(source, entries, max_file_bytes)
    report = PublishReport(sha, published=False, refused=plan.refused)
    staging = store / ".staging" / f"{sha}-{secrets.token_hex(4)}"
    os.mkdir(staging, 0o700)
    try:
        report.files, report.bytes = _build(source, plan, staging)
        _write_meta(store, report)
        # flushed before any reader can be pointed at it; the new name survives a crash
        store_ops.commit_staged(store, staging, sha)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if plan.refused:
        shown = ", ".join(f"{p!r} ({r})" for p, r in plan.refused[:5])
        log.warning("Tutorial commit %s: %d entries left out: %s", sha[:12], len(plan.refused), shown)
    return report


def _publish_locked(
    source: GitSource, sha: str, store: Path, max_file_bytes: int, keep: int, limits: CommitLimits
) -> PublishReport:
    for leftover in (store / ".staging").iterdir():
        shutil.rmtree(leftover, ignore_errors=True)
    version = store / "versions" / sha
    if version.is_dir() and not version.is_symlink():
        meta = store_ops.read_meta(store, sha)
        refused = [(path, reason) for path, reason in meta.get("refused", [])]
        report = PublishReport(sha, False, meta.get("files", 0), meta.get("bytes", 0), refused)
        if current_version(store) == sha:
            return report
        _write_meta(store, report)  # now the newest, so pruning keeps it
    else:
        report = _build_version(source, sha, store, max_file_bytes, limits)
    store_ops.switch(store, sha)
    report.published = True
    pruned = store_ops.prune(store, keep, sha)
    log.info("Tutorial commit %s is current; pruned %d old versions", sha[:12], len(pruned))
    return report



def publish(
    source: GitSource,
    sha: str,
    store: Path,
    max_file_bytes: int = 100 * MiB,
    keep: int = 3,
    limits: CommitLimits | None = None,
) -> PublishReport:
    """Publish commit ``sha`` of ``source`` as ``STORE/versions/<sha>`` and make it ``current``.

    Entries over ``max_file_bytes`` are left out and reported; a commit whose publishable
    entries are over ``limits`` (total size, file count) is refused whole with a
    :class:`SyncError`, and the current version stays.
    """
    started = time.monotonic()
    if not SHA_RE.match(sha):
        raise SyncError(f"{sha!r} is not a full commit sha.")
    if keep < 1:
        raise SyncError(f"keep must be at least 1 (the current version), not {keep}.")
    store = Path(store)
    try:
        store_ops.make_layout(store)
        with store_ops.locked(store):
            report = _publish_locked(source, sha, store, max_file_bytes, keep, limits or CommitLimits())
    except OSError as e:
        raise SyncError(f"Writing the tutorial store {store} failed: {e.strerror or e}.") from e
    report.duration_s = time.monotonic() - started
    log.info(
        "Published tutorial commit %s: %d files, %d bytes, %d refused, %.2fs",
        *(sha[:12], report.files, report.bytes, len(report.refused), report.duration_s),
    )
    return report
