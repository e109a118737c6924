"""The pure checks of an archive's manifest, and where a stack's database password comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub_spawner.ops import manifest as mf
from gpuhub_spawner.ops.databases import with_password
from gpuhub_spawner.ops.manifest import OpsError

FILES = {"db/hub.sqlite": "a" * 64, "data/jupyterhub_cookie_secret": "b" * 64}
GOOD = mf.build("2026-01-01T00:00:00Z", {"gpuhub": "0.2.0"},
                [{"role": "hub", "kind": "sqlite", "member": "db/hub.sqlite", "tables": {}, "revision": {}}], FILES)


@pytest.mark.parametrize(
    ("manifest", "found", "expected"),
    [
        (GOOD, FILES, []),
        (GOOD, {**FILES, "db/hub.sqlite": "c" * 64}, ["db/hub.sqlite: checksum differs"]),
        (GOOD, {"db/hub.sqlite": "a" * 64}, ["data/jupyterhub_cookie_secret: listed in the manifest, missing"]),
        (GOOD, {**FILES, "secrets/extra": "d" * 64}, ["secrets/extra: in the archive, not in its manifest"]),
        ({"format": "something-else"}, FILES, ["not a gpuhub backup"]),
        (None, FILES, ["not a gpuhub backup"]),
        ({**GOOD, "format_version": 99}, FILES, ["of format 99"]),
        ({**GOOD, "databases": [{"role": "hub", "member": "db/gone.sqlite"}]}, FILES, ["its dump is not listed"]),
    ],
    ids=["intact", "changed", "missing", "extra", "foreign", "no-manifest", "newer-format", "unlisted-dump"],
)
def test_check(manifest, found, expected) -> None:
    problems = mf.check(manifest, found)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert start in problem


@pytest.mark.parametrize(
    ("name", "ok"),
    [("manifest.json", True), ("db/hub.pgdump", True), ("secrets/crypt_key", True), ("../evil", False),
     ("/etc/passwd", False), ("db/../../x", False), ("data/sub/file", False), ("other/file", False),
     ("data/.hidden", False), ("data/", False)],
)
def test_safe_member(name: str, ok: bool) -> None:
    assert mf.safe_member(name) is ok


def test_compare_counts_and_layout() -> None:
    assert mf.compare_counts({"users": 3, "groups": 2}, {"users": 3, "groups": 2, "new": 0}) == []
    assert mf.compare_counts({"users": 3, "groups": 2}, {"users": 2}) == ["groups: missing (expected 2 rows)",
                                                                         "users: 2 rows, expected 3"]
    assert mf.layout_problem([{"role": "hub+usage", "kind": "postgresql"}], [("hub+usage", "postgresql")]) is None
    assert "hub.db_url" in mf.layout_problem([{"role": "hub", "kind": "sqlite"}], [("hub", "postgresql")])


def test_password_from_pgpassword_file(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("s3cr:et\n")
    url = "postgresql+psycopg://gpuhub@db:5432/gpuhub"
    with_file = with_password(url, {"PGPASSWORD_FILE": str(secret)})
    assert with_file == "postgresql+psycopg://gpuhub:s3cr%3Aet@db:5432/gpuhub"
    assert with_password(url, {}) == url
    assert with_password(url, {"PGPASSWORD_FILE": str(secret), "PGPASSWORD": "x"}) == url  # libpq reads it
    assert with_password("sqlite:////srv/x.sqlite", {"PGPASSWORD_FILE": str(secret)}) == "sqlite:////srv/x.sqlite"
    with pytest.raises(OpsError, match="cannot be read"):
        with_password(url, {"PGPASSWORD_FILE": str(tmp_path / "absent")})
