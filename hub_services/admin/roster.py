"""Roster import: parse and check ``github_username,group`` rows (pure, no I/O).

Every row is checked before anything is applied; a row is either good (a :class:`RosterRow`)
or rejected with the line it came from and a reason an admin can act on.

CSV text is read with the :mod:`csv` module, so what spreadsheets export works: a UTF-8 byte
order mark (Excel's "CSV UTF-8"), quoted fields, CRLF line ends, ``;`` or tab separators (a
first row without a comma that has one of them), empty trailing cells, and extra columns
(names, e-mail addresses...) when a header row names the ``github_username`` and ``group``
columns (any case; spaces for underscores: "GitHub username").
"""

from __future__ import annotations

import csv
import io
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


#: header names for the two columns (normalised: lower case, spaces and hyphens as "_")
USERNAME_COLUMNS = ("github_username", "username")
GROUP_COLUMNS = ("group",)

#: (line number, the row as written, its fields, or the reason it cannot be read)
Raw = tuple[int, str, "list[str] | str"]


def _csv_rows(text: str) -> list[Raw]:
    """The non-blank, non-comment rows of CSV text, with the line each starts on."""
    text = text.removeprefix("\ufeff")
    lines = io.StringIO(text, newline="").readlines()
    first = next((x for x in lines if x.strip() and not x.lstrip().startswith("#")), "")
    delimiter = next((d for d in ";\t" if "," not in first and d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    rows: list[Raw] = []
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        if not any(f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
            continue  # a blank line (or a spreadsheet's empty row ",,"), or a comment
        shown = " ".join(x.strip() for x in lines[start - 1 : end])
        rows.append((start, _short(shown), fields))
    return rows


def _json_rows(items: list[Any]) -> list[Raw]:
    rows: list[Raw] = []
    for line, item in enumerate(items, 1):
        shown = _short(item if isinstance(item, str) else repr(item))
        if isinstance(item, str):
            rows.append((line, shown, next(csv.reader([item], skipinitialspace=True), [])))
        elif isinstance(item, dict):
            pair = [item.get("github_username", item.get("username")), item.get("group")]
            ok = len(item) == 2
            rows.append((line, shown, pair if ok else "an object needs exactly the keys 'github_username' and 'group'"))
        elif isinstance(item, (list, tuple)):
            rows.append((line, shown, list(item)))
        else:
            rows.append((line, shown, "a row is 'github_username,group'"))
    return rows


def _norm(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _header(fields: list[Any] | str) -> tuple[int, int] | None:
    """The (username, group) column indexes when ``fields`` is a header row naming both."""
    if isinstance(fields, str) or not all(isinstance(f, str) for f in fields):
        return None
    names = [_norm(f) for f in fields]
    user = next((names.index(n) for n in USERNAME_COLUMNS if n in names), None)
    group = next((names.index(n) for n in GROUP_COLUMNS if n in names), None)
    return None if user is None or group is None else (user, group)


def _pick(fields: list[Any] | str, columns: tuple[int, int] | None) -> tuple[str, str] | str:
    """(username, group) from a row's fields, or the reason the row cannot be read."""
    if isinstance(fields, str):
        return fields
    if columns is not None:
        missing = [HEADER[i] for i, c in enumerate(columns) if c >= len(fields)]
        if missing:
            return f"this row has no {' and no '.join(missing)} column"
        fields = [fields[columns[0]], fields[columns[1]]]
    while len(fields) > 2 and not str(fields[-1] or "").strip():
        fields = fields[:-1]  # a spreadsheet's empty trailing cells
    if len(fields) != 2:
        return (
            f"expected 2 fields (github_username,group), got {len(fields)}; "
            "for more columns, start with a header row naming github_username and group"
        )
    if not all(isinstance(f, str) for f in fields):
        return "github_username and group must be text"
    return fields[0].strip(), fields[1].strip()


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

    ``body`` is CSV text (one ``github_username,group`` per line; blank lines and ``#``
    comments are skipped; a header row naming the ``github_username`` and ``group`` columns
    is optional, and with one any other columns are ignored) or a JSON list whose items are
    such strings, ``[username, group]`` pairs or ``{"github_username": ..., "group": ...}``.
    Usernames are lower-cased (GitHub's are case-insensitive, and so are the hub's).
    A repeated (username, group) pair is rejected, naming the line it repeats.
    """
    good: list[RosterRow] = []
    rejected: list[Rejected] = []
    seen: dict[tuple[str, str], int] = {}
    try:
        raw_rows = _csv_rows(body) if isinstance(body, str) else _json_rows(body)
    except csv.Error as e:
        return [], [Rejected(0, "", f"the roster cannot be read as CSV ({e}); export it as CSV and try again")]
    columns = _header(raw_rows[0][2]) if raw_rows else None
    if columns is not None:
        raw_rows = raw_rows[1:]
    if len(raw_rows) > MAX_ROWS:
        return [], [Rejected(0, "", f"a roster may have at most {MAX_ROWS} rows; split it")]
    for line, shown, fields in raw_rows:
        split = _pick(fields, columns)
        if isinstance(split, str):
            rejected.append(Rejected(line, shown, split))
            continue
        username, group = split
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
