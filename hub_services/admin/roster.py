"""Roster import: parse and check ``github_username,group`` rows (pure, no I/O).

Every row is checked before anything is applied; a row is either good (a :class:`RosterRow`)
or rejected with the line it came from and a reason an admin can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: GitHub's rule: letters, digits and single hyphens, not at either end, at most 39 characters.
USERNAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,38}$")
#: Group names: the hub's GitHub teams are mirrored as ``org:team``.
GROUP = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$", re.IGNORECASE)
MAX_ROWS = 5000
HEADER = ("github_username", "group")


@dataclass(frozen=True)
class RosterRow:
    line: int
    username: str
    group: str


@dataclass(frozen=True)
class Rejected:
    line: int
    row: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "row": self.row, "reason": self.reason}


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _raw_rows(body: str | list[Any]) -> list[tuple[int, Any]]:
    """(line number, raw row) pairs from CSV text or a JSON list."""
    if isinstance(body, str):
        rows = []
        for number, line in enumerate(body.splitlines(), 1):
            text = line.strip()
            if text and not text.startswith("#"):
                rows.append((number, text))
        return rows
    return list(enumerate(body, 1))


def _split(raw: Any) -> tuple[str, str] | str:
    """(username, group), or the reason the row cannot be read."""
    if isinstance(raw, str):
        parts = [p.strip() for p in raw.split(",")]
    elif isinstance(raw, dict):
        parts = [raw.get("github_username", raw.get("username")), raw.get("group")]
        if len(raw) != 2:
            return "an object needs exactly the keys 'github_username' and 'group'"
    elif isinstance(raw, (list, tuple)):
        parts = list(raw)
    else:
        return "a row is 'github_username,group'"
    if len(parts) != 2:
        return f"expected 2 fields (github_username,group), got {len(parts)}"
    if not all(isinstance(p, str) for p in parts):
        return "github_username and group must be text"
    return parts[0].strip(), parts[1].strip()


def _check(username: str, group: str) -> str | None:
    if not USERNAME.match(username.lower()):
        return (
            f"'{_short(username)}' is not a GitHub username (letters, digits and single "
            "hyphens, not at either end, at most 39 characters)"
        )
    if not GROUP.match(group):
        return (
            f"'{_short(group)}' is not a group name (letters, digits, '.', '_', ':' and '-', "
            "starting with a letter or digit, at most 128 characters)"
        )
    return None


def parse_roster(body: str | list[Any]) -> tuple[list[RosterRow], list[Rejected]]:
    """The good rows and the rejected ones of a roster; nothing is applied here.

    ``body`` is CSV text (one ``github_username,group`` per line; blank lines, ``#`` comments
    and a ``github_username,group`` header are skipped) or a JSON list whose items are such
    strings, ``[username, group]`` pairs or ``{"github_username": ..., "group": ...}``.
    Usernames are lower-cased (GitHub's are case-insensitive, and so are the hub's).
    A repeated (username, group) pair is rejected, naming the line it repeats.
    """
    good: list[RosterRow] = []
    rejected: list[Rejected] = []
    seen: dict[tuple[str, str], int] = {}
    raw_rows = _raw_rows(body)
    if len(raw_rows) > MAX_ROWS:
        return [], [Rejected(0, "", f"a roster may have at most {MAX_ROWS} rows; split it")]
    for line, raw in raw_rows:
        shown = _short(raw if isinstance(raw, str) else repr(raw))
        split = _split(raw)
        if isinstance(split, str):
            rejected.append(Rejected(line, shown, split))
            continue
        username, group = split
        if line == raw_rows[0][0] and (username.lower(), group.lower()) == HEADER:
            continue
        reason = _check(username, group)
        key = (username.lower(), group)
        if reason is None and key in seen:
            reason = f"duplicate of line {seen[key]}"
        if reason is not None:
            rejected.append(Rejected(line, shown, reason))
            continue
        seen[key] = line
        good.append(RosterRow(line, key[0], group))
    return good, rejected
