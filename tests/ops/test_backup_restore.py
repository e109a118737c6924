"""``gpuhub backup`` and ``gpuhub restore`` on real state: a real hub on sqlite, a real PostgreSQL.

One module-wide hub state (users, groups with quotas, named servers' spawner state, ledger rows,
secrets), served by a real JupyterHub for the refusal test and backed up once it stopped; each
test restores that one archive somewhere new.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import State, gpuhub
from harness import HubProcess
from pg import create_database, postgres_fixture

postgres_url = postgres_fixture()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A filled state, a real hub started on it, a restore tried while it ran, then a backup."""
    workdir = tmp_path_factory.mktemp("hub")
    state = State(workdir)
    state.fill()
    hub = HubProcess(workdir)
    hub.start(env={"GPUHUB_CONFIG": str(state.config)})
    try:
        online = gpuhub("backup", "--secrets-dir", str(state.secrets_dir), "--out", str(workdir / "online.tar.gz"),
                        env=hub.env)
        while_running = gpuhub("restore", str(workdir / "online.tar.gz"), "--yes", *state.args()[2:], env=hub.env)
    finally:
        hub.stop()
    rows = state.rows()
    backup = gpuhub("backup", *state.args(), "--out", str(workdir / "backup.tar.gz"))
    assert backup.returncode == 0, backup.stderr
    return {"state": state, "online": online, "while_running": while_running, "backup": backup,
            "archive": workdir / "backup.tar.gz", "rows": rows, "hub_env": hub.env}


def test_restore_refuses_a_running_hub(made: dict) -> None:
    assert made["online"].returncode == 0, made["online"].stderr  # an online backup of a live hub is fine
    refused = made["while_running"]
    assert refused.returncode == 2, refused.stdout
    assert "a hub is running on this state" in refused.stderr and "stop it first" in refused.stderr
    assert "restored" not in refused.stdout


def test_backup_is_private_holds_everything_and_prints_no_secret(made: dict) -> None:
    state, out = made["state"], made["backup"]
    archive = made["archive"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert str(archive) in out.stdout.splitlines()[-1]
    assert "holds secrets" in out.stdout
    printed = out.stdout + out.stderr + made["online"].stdout + made["online"].stderr
    for value in [*state.secret_values, (state.data_dir / "shared-password").read_text().strip()]:
        assert value not in printed
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
    assert {"db/hub.sqlite", "db/usage.sqlite", "data/jupyterhub_cookie_secret", "data/shared-password",
            "secrets/crypt_key", "config/gpuhub.yaml", "manifest.json"} <= names
    assert manifest["versions"]["jupyterhub"] and manifest["versions"]["gpuhub"]
    hub_db = next(db for db in manifest["databases"] if db["role"] == "hub")
    assert hub_db["tables"]["users"] == 3 and hub_db["revision"]["hub"]


def test_round_trip_sqlite_keeps_every_row_and_secret(made: dict, new_state) -> None:
    target = new_state()
    result = gpuhub("restore", str(made["archive"]), *target.args())
    assert result.returncode == 0, result.stderr
    assert "checked the hub database" in result.stdout and "as in the backup" in result.stdout
    assert target.rows() == made["rows"]
    source = made["state"]
    for folder, name in ((target.data_dir, "jupyterhub_cookie_secret"), (target.secrets_dir, "crypt_key")):
        origin = (source.data_dir if folder == target.data_dir else source.secrets_dir) / name
        assert (folder / name).read_bytes() == origin.read_bytes()
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(target.secrets_dir.stat().st_mode) == 0o700


def test_restore_refuses_non_empty_state_without_yes(made: dict, new_state) -> None:
    target = new_state()
    target.add_secrets()
    (target.data_dir / "jupyterhub.sqlite").write_bytes(b"")
    before = (target.data_dir / "jupyterhub_cookie_secret").read_bytes()
    refused = gpuhub("restore", str(made["archive"]), *target.args())
    assert refused.returncode == 2
    assert "already has state" in refused.stderr and "--yes" in refused.stderr
    assert (target.data_dir / "jupyterhub_cookie_secret").read_bytes() == before
    assert (target.data_dir / "jupyterhub.sqlite").read_bytes() == b""
    done = gpuhub("restore", str(made["archive"]), *target.args(), "--yes")
    assert done.returncode == 0, done.stderr
    assert target.rows() == made["rows"]


def _rewrite(source: Path, dest: Path, change) -> None:
    with tarfile.open(source) as tar, tarfile.open(dest, "w:gz") as out:
        for member in tar:
            data = tar.extractfile(member).read()
            data = change(member.name, data)
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("damage", ["tampered", "foreign", "truncated", "escaping"])
def test_restore_refuses_a_damaged_or_foreign_archive(made: dict, new_state, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bad.tar.gz"
    if damage == "tampered":  # a quota edited inside the dump: its checksum no longer matches
        _rewrite(made["archive"], bad, lambda n, d: d.replace(b"max_gpu_units", b"max_gpu_unitZ") if n == "db/hub.sqlite" else d)
    elif damage == "foreign":
        (tmp_path / "notes.txt").write_text("hello")
        subprocess.run(["tar", "-czf", str(bad), "-C", str(tmp_path), "notes.txt"], check=True)
    elif damage == "truncated":
        bad.write_bytes(made["archive"].read_bytes()[:2000])
    else:  # a member that would land outside the restore folder
        with tarfile.open(bad, "w:gz") as out:
            info = tarfile.TarInfo("../evil")
            info.size = 1
            out.addfile(info, io.BytesIO(b"x"))
    target = new_state()
    refused = gpuhub("restore", str(bad), *target.args())
    assert refused.returncode == 2, refused.stdout
    assert "Nothing was changed" in refused.stderr
    expected = {"tampered": "checksum differs", "foreign": "no gpuhub backup holds", "truncated": "not a readable",
                "escaping": "no gpuhub backup holds"}[damage]
    assert expected in refused.stderr
    assert not (target.data_dir / "jupyterhub.sqlite").exists()
    assert not target.secrets_dir.exists()


def test_round_trip_postgres(postgres_url: str, new_state) -> None:
    password = "pw-" + "s3cr3t:value"
    urls = {role: create_database(postgres_url, f"ops_{role}").replace("postgres@", f"postgres:{password}@")
            for role in ("hub", "usage", "hub2", "usage2")}
    source = new_state(hub_url=urls["hub"], usage_url=urls["usage"])
    source.fill()
    rows = source.rows()
    archive = source.root / "pg.tar.gz"
    backup = gpuhub("backup", *source.args(), "--out", str(archive))
    assert backup.returncode == 0, backup.stderr
    with tarfile.open(archive) as tar:
        assert {"db/hub.pgdump", "db/usage.pgdump"} <= set(tar.getnames())
    target = new_state(hub_url=urls["hub2"], usage_url=urls["usage2"])
    result = gpuhub("restore", str(archive), *target.args())
    assert result.returncode == 0, result.stderr
    assert target.rows() == rows
    assert rows["hub"]["users"] and rows["usage"]["gpuhub_usage"]
    for out in (backup, result):
        assert password not in out.stdout + out.stderr
    again = gpuhub("restore", str(archive), *target.args())
    assert again.returncode == 2 and "already has state" in again.stderr
