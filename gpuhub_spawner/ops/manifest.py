"""What a gpuhub backup archive holds, and the checks a restore makes before touching anything (pure).

An archive is a tar.gz of plain files under a few top-level folders (:data:`SECTIONS`) and one
``manifest.json``: the versions that wrote it, when, each database's kind, file and row counts,
and the sha256 of every other member.  A restore refuses an archive whose manifest is missing
or of another format, that holds a member the manifest does not list (or lacks one it lists),
or whose member's checksum differs: a corrupt, truncated, tampered or foreign archive never
reaches the hub's state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FORMAT = "gpuhub-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: top-level folders of an archive: database dumps, data_dir files, the secrets dir, gpuhub.yaml
SECTIONS = ("db", "data", "secrets", "config")
#: the members that hold secret values (their contents are never printed)
SECRET_SECTIONS = ("data", "secrets", "config")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@=-]{0,200}")


class OpsError(Exception):
    """An operation refused or failed; the message says what happened and what to do."""


def safe_member(name: str) -> bool:
    """Whether ``name`` is a member an archive may hold: ``<section>/<plain name>`` or the manifest."""
    if name == MANIFEST:
        return True
    parts = name.split("/")
    return len(parts) == 2 and parts[0] in SECTIONS and bool(_NAME.fullmatch(parts[1]))


def build(
    created_at: str,
    versions: Mapping[str, str],
    databases: list[dict[str, Any]],
    files: Mapping[str, str],
) -> dict[str, Any]:
    """The manifest of an archive holding ``files`` (member -> sha256) and ``databases``.

    Each database entry: ``role`` (hub, usage, or hub+usage when both share one database),
    ``kind`` (sqlite, postgresql), ``member`` (its dump), ``tables`` (name -> row count) and
    ``revision`` (JupyterHub's and gpuhub's Alembic revisions found in it).
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": created_at,
        "versions": dict(versions),
        "databases": databases,
        "files": dict(sorted(files.items())),
    }


def check(manifest: Any, found: Mapping[str, str]) -> list[str]:
    """Problems of an archive whose members other than the manifest hash to ``found``; [] if none."""
    if not isinstance(manifest, Mapping) or manifest.get("format") != FORMAT:
        return ["it is not a gpuhub backup (its manifest.json is missing or of another format)"]
    if manifest.get("format_version") != FORMAT_VERSION:
        return [f"it is a gpuhub backup of format {manifest.get('format_version')!r}; this gpuhub reads {FORMAT_VERSION}"]
    listed = manifest.get("files")
    if not isinstance(listed, Mapping):
        return ["its manifest lists no files"]
    problems = [f"{name}: listed in the manifest, missing from the archive" for name in sorted(set(listed) - set(found))]
    problems += [f"{name}: in the archive, not in its manifest" for name in sorted(set(found) - set(listed))]
    problems += [
        f"{name}: checksum differs from the manifest (corrupt or changed)"
        for name in sorted(set(found) & set(listed))
        if found[name] != listed[name]
    ]
    for db in manifest.get("databases") or []:
        if not isinstance(db, Mapping) or db.get("member") not in listed:
            problems.append(f"database {db.get('role') if isinstance(db, Mapping) else db!r}: its dump is not listed")
    return problems


def compare_counts(expected: Mapping[str, int], found: Mapping[str, int]) -> list[str]:
    """How the row counts ``found`` differ from ``expected`` (tables missing or with other counts)."""
    out = []
    for table, count in sorted(expected.items()):
        if table not in found:
            out.append(f"{table}: missing (expected {count} rows)")
        elif found[table] != count:
            out.append(f"{table}: {found[table]} rows, expected {count}")
    return out


def summary(tables: Mapping[str, int]) -> str:
    """A short account of a database's rows: the tables operators know, then the total."""
    known = ("users", "groups", "spawners", "gpuhub_usage", "gpuhub_user_quota")
    parts = [f"{name}={tables[name]}" for name in known if name in tables]
    return ", ".join([*parts, f"{len(tables)} tables, {sum(tables.values())} rows"])


def layout_problem(archived: list[Mapping[str, Any]], target: list[tuple[str, str]]) -> str | None:
    """Why the archive's databases cannot go to ``target`` ((role, kind) each), or None."""
    have = [(str(db.get("role")), str(db.get("kind"))) for db in archived]
    if sorted(have) == sorted(target):
        return None
    return (
        f"the archive holds the databases {have}, but this configuration has {target}: restore with a "
        "gpuhub.yaml whose hub.db_url and hub.usage_db_url are of the same kinds as when it was made"
    )
