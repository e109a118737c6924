"""Refresh a user's editable copy of the shared tutorials without ever losing their edits.

At container start the read-only tutorials directory (SRC) is mirrored into the user's
editable copy (DST, on a persistent volume).  The manifest ``DST/.gpuhub-copy.json`` records
the sha256 of each file this script wrote: the upstream version the user started from.  An
unedited file follows upstream; an edited file is never touched, and a newer upstream
version is saved beside it as ``intro.upstream.ipynb``; a deleted file is never re-created;
files removed upstream stay.  Symlinks in SRC and VCS directories are skipped, and nothing
is written outside DST.  All writes are atomic (temp file + os.replace).

Each start also leaves a short report, ``TUTORIAL-UPDATES.txt``, at the top of DST.  That
name belongs to whoever has it first: when a tutorial or the user has a file of that name, the
report goes to the first free ``TUTORIAL-UPDATES-<n>.txt`` instead (and says so).  The manifest
records which file is the report and what was written; a report the user edited becomes theirs
and is never written again.  So the report never overwrites a user's file and never keeps an
upstream file from being delivered.

Standard library only: the image build copies this file to ``gpuhub_usercopy.py`` and the
start script runs ``python3 gpuhub_usercopy.py SRC DST``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MANIFEST_NAME = ".gpuhub-copy.json"
MANIFEST_VERSION = 2  # 2: the report file is recorded ("report")
REPORT_NAME = "TUTORIAL-UPDATES.txt"
REPORT_ALTERNATES = 99  # TUTORIAL-UPDATES-2.txt ... TUTORIAL-UPDATES-100.txt
_OLD_REPORT_MAX = 1 << 16
SKIP_DIR_NAMES = frozenset({".git", ".hg", ".svn", ".bzr", ".ipynb_checkpoints", "__pycache__"})
USAGE = "usage: gpuhub_usercopy.py SRC DST  (copy the tutorials in SRC into the editable DST)"
_TMP_PREFIX = ".gpuhub-tmp-"
_CHUNK = 1 << 20


class CopyError(Exception):
    """DST as a whole is unusable (``exit_code`` is what main() returns)."""

    exit_code = 1


class SourceError(CopyError):
    """SRC is missing or unreadable, or DST lies inside it."""

    exit_code = 2


@dataclass
class Report:
    """What one sync did; every entry is a posix path relative to DST."""

    copied: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    kept_deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # conflict -> sibling now holding the upstream version (None: it could not be saved)
    upstream_copies: dict[str, str | None] = field(default_factory=dict)
    # path -> status word: "skipped-symlink", "kept-deleted", "edited-by-you", ...
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def note(self, bucket: list[str], rel: str, reason: str = "") -> None:
        bucket.append(rel)
        if reason:
            self.reasons[rel] = reason

    def summary(self) -> str:
        """One human line, e.g. ``tutorial copy: 3 new, 1 updated, 1 conflict (...)``."""
        counted = [(self.copied, "new"), (self.updated, "updated"), (self.conflicts, ""),
                   (self.kept_deleted, "deleted by you (not restored)"),
                   (self.skipped, "skipped")]
        parts = [f"{len(items)} {label}" if label else self._conflict_phrase()
                 for items, label in counted if items]
        if not parts:
            return f"tutorial copy: up to date ({len(self.unchanged)} files)"
        return "tutorial copy: " + ", ".join(parts)

    def _conflict_phrase(self) -> str:
        head = f"{len(self.conflicts)} conflict" + ("s" if len(self.conflicts) > 1 else "")
        saved = [s for s in (self.upstream_copies.get(c) for c in self.conflicts) if s]
        if not saved:
            return f"{head} (your edits kept)"
        names = ", ".join(saved[:3]) + (f" and {len(saved) - 3} more" if len(saved) > 3 else "")
        noun = "new version" if len(saved) == 1 else "new versions"
        return f"{head} (your edits kept; {noun} saved as {names})"

    def detail_lines(self) -> list[str]:
        """One line per conflict, skipped path, deleted-but-changed file and warning."""
        lines = []
        for rel in self.conflicts:
            sibling = self.upstream_copies.get(rel)
            tail = f"the new version is in {sibling}" if sibling else \
                f"new version not saved ({self.reasons.get(rel, '')})"
            lines.append(f"conflict: {rel}: your edits kept; {tail}")
        lines.extend(f"note: {rel}: you deleted it and it changed upstream; not restored"
                     for rel in self.kept_deleted
                     if self.reasons.get(rel) == "upstream-changed-deleted-by-you")
        lines.extend(f"skipped: {rel} ({self.reasons.get(rel, '')})" for rel in self.skipped)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


def upstream_name(rel: str) -> str:
    """``a/intro.ipynb`` -> ``a/intro.upstream.ipynb``; ``Makefile`` -> ``Makefile.upstream``."""
    head, _, name = rel.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    new = f"{stem}.upstream.{suffix}" if dot and stem else f"{name}.upstream"
    return f"{head}/{new}" if head else new


def is_safe_rel(rel: str) -> bool:
    """True for a plain relative posix path (no ``..``, not absolute) that stays inside."""
    return "\x00" not in rel and all(p not in ("", ".", "..") for p in rel.split("/"))


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes, refusing to open it through a symlink."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | nofollow)) as handle:
        yield from iter(lambda: handle.read(_CHUNK), b"")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _replace_atomic(target: Path, fill: Callable[[BinaryIO], object], mode: int) -> None:
    """Write via ``fill(file)`` into a temp file beside ``target``, then os.replace it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_atomic(src: Path, target: Path) -> str:
    """Copy ``src`` over ``target`` atomically; return the sha256 of what was written."""
    digest = hashlib.sha256()

    def fill(out: BinaryIO) -> None:
        for chunk in _chunks(src):
            digest.update(chunk)
            out.write(chunk)

    # Plain copy of the permission bits, always owner-writable so the user can edit it.
    _replace_atomic(target, fill, (os.lstat(src).st_mode & 0o777) | 0o600)
    return digest.hexdigest()


def _walk_source(src: Path, report: Report) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the regular files under SRC, never via symlinks."""
    found: list[tuple[str, Path]] = []
    stack = [(src, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            report.note(report.skipped, prefix.rstrip("/") or ".", f"unreadable: {exc.strerror}")
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                report.note(report.skipped, rel, "skipped-symlink")
            elif entry.is_dir(follow_symlinks=False):
                if entry.name not in SKIP_DIR_NAMES:
                    stack.append((Path(entry.path), rel + "/"))
            elif not entry.is_file(follow_symlinks=False):
                report.note(report.skipped, rel, "skipped-not-a-regular-file")
            elif rel == MANIFEST_NAME or not is_safe_rel(rel):
                report.note(report.skipped, rel, "skipped-reserved-or-unsafe-name")
            else:
                found.append((rel, Path(entry.path)))
    return sorted(found)


def _clean_table(value: object) -> dict[str, str]:
    """A manifest table keeping only safe paths and well-formed hashes."""
    if not isinstance(value, dict):
        raise TypeError("manifest table is not an object")
    return {k: v for k, v in value.items()
            if isinstance(k, str) and is_safe_rel(k) and isinstance(v, str) and len(v) == 64}


def report_names() -> list[str]:
    """The report's possible names, preferred first."""
    stem, _, suffix = REPORT_NAME.rpartition(".")
    return [REPORT_NAME] + [f"{stem}-{n}.{suffix}" for n in range(2, REPORT_ALTERNATES + 2)]


def _clean_report(value: object) -> dict[str, str]:
    """The manifest's record of the report file: ``{"path": name, "sha256": hash}`` or empty."""
    if (isinstance(value, dict) and value.get("path") in report_names()
            and isinstance(value.get("sha256"), str) and len(value["sha256"]) == 64):
        return {"path": value["path"], "sha256": value["sha256"]}
    return {}


def _looks_like_old_report(path: Path) -> bool:
    """A report written by the old script (manifest version 1 kept no record of it)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _OLD_REPORT_MAX:
            return False
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return (lines[0].startswith("tutorial copy: ") and lines[-1] == ""
            and all(line.startswith("  ") for line in lines[1:-1]))


def report_text(report: Report, name: str) -> str:
    lines = [report.summary(), *("  " + line for line in report.detail_lines())]
    if report.updated or report.copied:
        lines.append("  updated or new: " + ", ".join(sorted(report.updated + report.copied)[:50]))
    if name != REPORT_NAME:
        lines.append(f"  note: {REPORT_NAME} is your file or a tutorial's, so this report is in {name}")
    return "\n".join(lines) + "\n"


class _Sync:
    """One run: the manifest tables plus the per-file decisions."""

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst, self.report = src, dst, Report()
        self.files: dict[str, str] = {}  # path -> hash of the upstream version we wrote
        self.siblings: dict[str, str] = {}  # .upstream path -> hash we wrote there
        self.report_file: dict[str, str] = {}  # {"path", "sha256"} of the last report written
        self.old_version = MANIFEST_VERSION
        self.dirty = not self._load_manifest()

    def _load_manifest(self) -> bool:
        """Read the manifest; False when it must be (re)written whatever happens."""
        path = self.dst / MANIFEST_NAME
        try:
            data = json.loads(path.read_bytes())
            raw = data.get("files", {}), data.get("upstream_copies", {})
            self.files, self.siblings = _clean_table(raw[0]), _clean_table(raw[1])
            self.report_file = _clean_report(data.get("report"))
            self.old_version = data.get("version")
        except FileNotFoundError:
            return False
        except OSError as exc:  # unreadable: going on could resurrect deleted files
            raise CopyError(f"cannot read {path}: {exc.strerror}") from exc
        except (ValueError, TypeError, AttributeError):
            self.files, self.siblings = {}, {}
            self.report.warnings.append(f"{MANIFEST_NAME} was damaged and has been rebuilt;"
                                        " files you deleted before may have come back")
            return False
        # Rewrite it when anything had to be dropped or the format is older.
        return (self.files, self.siblings) == raw and data.get("version") == MANIFEST_VERSION

    def run(self, write_report: bool = False) -> Report:
        found = _walk_source(self.src, self.report)
        upstream = {rel for rel, _ in found}
        self.release_report(upstream)
        for rel, src_path in found:
            try:
                self.sync_file(rel, src_path)
            except OSError as exc:
                self.report.note(self.report.skipped, rel, f"error: {exc.strerror or exc}")
        if write_report:
            self.write_report(upstream)
        if self.dirty:
            data = {"version": MANIFEST_VERSION, "files": self.files,
                    "upstream_copies": self.siblings, "report": self.report_file}
            body = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
            try:
                _replace_atomic(self.dst / MANIFEST_NAME, lambda out: out.write(body), 0o600)
            except OSError as exc:
                raise CopyError(f"cannot write {MANIFEST_NAME} in {self.dst}: {exc}") from exc
        return self.report

    def is_our_report(self, name: str) -> bool:
        """Whether DST/name is the report we last wrote there, unedited since."""
        path = self.dst / name
        if path.is_symlink() or not path.is_file():
            return False
        if self.report_file.get("path") == name:
            return _hash_file(path) == self.report_file["sha256"]
        return self.old_version == 1 and name == REPORT_NAME and _looks_like_old_report(path)

    def release_report(self, upstream: set[str]) -> None:
        """Give a report name back when a tutorial now has a file of that name."""
        for name in {self.report_file.get("path"), REPORT_NAME} & upstream:
            if name and self.is_our_report(name):
                (self.dst / name).unlink()
                if self.report_file.get("path") == name:
                    self.report_file, self.dirty = {}, True

    def write_report(self, upstream: set[str]) -> None:
        """Write the report under the first name that is free or already ours."""
        taken = upstream | set(self.files) | set(self.siblings)
        previous = self.report_file.get("path")
        for name in report_names():
            if name in taken or (os.path.lexists(self.dst / name) and not self.is_our_report(name)):
                continue
            body = report_text(self.report, name).encode()
            try:
                _replace_atomic(self.dst / name, lambda out, data=body: out.write(data), 0o644)
            except OSError as exc:
                self.report.warnings.append(f"could not write {name}: {exc.strerror}")
                return
            if previous and previous != name and self.is_our_report(previous):
                (self.dst / previous).unlink()  # an older report of ours, under a name now free
            record = {"path": name, "sha256": hashlib.sha256(body).hexdigest()}
            if record != self.report_file:
                self.report_file, self.dirty = record, True
            return
        self.report.warnings.append("no free name for the report; it was not written")

    def target_for(self, rel: str) -> Path | None:
        """DST path for ``rel``; None when a directory on the way leads outside DST."""
        current = self.dst
        for part in rel.split("/")[:-1]:
            current = current / part
            if current.is_symlink() and not _inside(str(self.dst), os.path.realpath(current)):
                return None
        return self.dst.joinpath(*rel.split("/"))

    def record(self, table: dict[str, str], rel: str, digest: str) -> None:
        if table.get(rel) != digest:
            table[rel] = digest
            self.dirty = True

    def sync_file(self, rel: str, src_path: Path) -> None:
        """Decide and act for one upstream file (rules in the module docstring)."""
        report, target = self.report, self.target_for(rel)
        if target is None:
            return report.note(report.skipped, rel, "skipped-symlink-outside-destination")
        upstream, base = _hash_file(src_path), self.files.get(rel)
        if not os.path.lexists(target):
            if base is None:
                self.record(self.files, rel, _copy_atomic(src_path, target))
                return report.note(report.copied, rel)
            gone = "kept-deleted" if upstream == base else "upstream-changed-deleted-by-you"
            return report.note(report.kept_deleted, rel, gone)  # never resurrect
        if target.is_symlink() or not target.is_file():
            return report.note(report.skipped, rel, "skipped-destination-not-a-regular-file")
        current = _hash_file(target)
        if current == upstream:  # in sync; also adopts a same-content file we never recorded
            self.record(self.files, rel, upstream)
            report.note(report.unchanged, rel)
        elif base is not None and current == base:  # not edited: follow upstream
            self.record(self.files, rel, _copy_atomic(src_path, target))
            report.note(report.updated, rel)
        elif base is not None and upstream == base:  # edited, upstream has not moved
            report.note(report.unchanged, rel, "edited-by-you")
        else:
            self.conflict(rel, src_path, target, upstream)
        return None

    def conflict(self, rel: str, src_path: Path, target: Path, upstream: str) -> None:
        """Keep the user's file; save upstream beside it unless that sibling is theirs."""
        sib_rel = upstream_name(rel)
        sibling = target.with_name(sib_rel.rpartition("/")[2])
        recorded, blocked = self.siblings.get(sib_rel), ""
        if not os.path.lexists(sibling):
            if recorded == upstream:  # they deleted the saved copy of this very version
                return self.report.note(self.report.unchanged, rel, "edited-by-you")
            self.record(self.siblings, sib_rel, _copy_atomic(src_path, sibling))
        elif sibling.is_symlink() or not sibling.is_file():
            blocked = f"{sib_rel} is not a regular file"
        else:
            current = _hash_file(sibling)
            if current == upstream:
                self.record(self.siblings, sib_rel, upstream)
            elif recorded is not None and current == recorded:  # ours, unedited: refresh
                self.record(self.siblings, sib_rel, _copy_atomic(src_path, sibling))
            else:
                blocked = f"{sib_rel} has your edits"
        self.report.upstream_copies[rel] = None if blocked else sib_rel
        return self.report.note(self.report.conflicts, rel, blocked or "conflict")


def _prepare(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    """Check SRC, create DST and check it is writable; return both fully resolved."""
    if not Path(src).is_dir():
        raise SourceError(f"tutorials directory {src} does not exist or is not a directory")
    if not os.access(src, os.R_OK | os.X_OK):
        raise SourceError(f"tutorials directory {src} is not readable")
    src_real = os.path.realpath(src)
    if _inside(src_real, os.path.realpath(dst)):
        raise SourceError(f"copy directory {dst} must not be inside tutorials directory {src}")
    try:
        Path(dst).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CopyError(f"cannot create copy directory {dst}: {exc.strerror}") from exc
    dst_real = os.path.realpath(dst)
    if not os.access(dst_real, os.W_OK | os.X_OK):
        raise CopyError(f"copy directory {dst} is not writable")
    return Path(src_real), Path(dst_real)


def sync_copy(src: str | Path, dst: str | Path, write_report: bool = False) -> Report:
    """Bring DST up to date with SRC without touching anything the user changed.

    With ``write_report``, also leave the user the report file (see the module docstring).
    """
    return _Sync(*_prepare(src, dst)).run(write_report)


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 when DST is unusable, 2 for a bad SRC or usage."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        report = sync_copy(args[0], args[1], write_report=True)
    except CopyError as exc:
        print(f"gpuhub usercopy: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a start script must never show a traceback
        print(f"gpuhub usercopy: unexpected error: {exc!r}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    for line in report.detail_lines():
        print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
