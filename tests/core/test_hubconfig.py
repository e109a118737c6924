"""Settings read from the environment and checked while the hub loads its config."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from traitlets.config import Config

from gpuhub_spawner.core.hubconfig import (
    ConfigError,
    check_spawner_config,
    env_int,
    env_json,
    env_number,
    env_port,
    env_quota,
    read_token_file,
    shared_password,
)

G0 = "GPU-00000000-1111-2222-3333-000000000000"
M0 = "MIG-00000000-1111-2222-3333-000000000010"


def refusal(monkeypatch: pytest.MonkeyPatch, name: str, raw: str, read) -> str:
    """The message of the ConfigError that ``read(name)`` raises with ``name`` set to ``raw``."""
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError) as info:
        read(name)
    return str(info.value)


# ---- env_json / env_number -------------------------------------------------------------


def test_env_json_inline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPUHUB_X", ' [{"uuid": "GPU-1"}] ')
    assert env_json("GPUHUB_X", None) == [{"uuid": "GPU-1"}]


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_env_json_default(monkeypatch: pytest.MonkeyPatch, value):
    if value is None:
        monkeypatch.delenv("GPUHUB_X", raising=False)
    else:
        monkeypatch.setenv("GPUHUB_X", value)
    default = ["d"]
    assert env_json("GPUHUB_X", default) is default


def test_env_json_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    path = tmp_path / "gpus.json"
    path.write_text('{"a": [1, 2]}\n')
    monkeypatch.setenv("GPUHUB_X", f"@{path}")
    assert env_json("GPUHUB_X", None) == {"a": [1, 2]}


def test_env_json_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    path = tmp_path / "nope.json"
    monkeypatch.setenv("GPUHUB_X", f"@{path}")
    with pytest.raises(ConfigError) as info:
        env_json("GPUHUB_X", None)
    message = str(info.value)
    assert message.startswith(f"GPUHUB_X (file {path}): cannot read it (No such file or directory).")
    assert "Point GPUHUB_X at a readable file." in message


@pytest.mark.parametrize(
    "raw, where",
    [("[1, 2", "GPUHUB_X: "), ("{'a': 1}", "GPUHUB_X: "), ("@FILE", "GPUHUB_X (file ")],
    ids=["unclosed", "single-quotes", "file"],
)
def test_env_json_bad_json_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raw, where):
    path = tmp_path / "bad.json"
    path.write_text("\n[1,,]")
    monkeypatch.setenv("GPUHUB_X", raw.replace("FILE", str(path)))
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        env_json("GPUHUB_X", None)
    assert str(info.value).startswith(where)
    assert str(info.value).endswith("Fix the JSON.")
    assert "line " in str(info.value) and "column " in str(info.value)


@pytest.mark.parametrize(
    "raw, default, minimum, expected",
    [("", 30, 0, 30), ("2.5", 30, 0, 2.5), (" 7 ", 30, 0, 7.0), ("0", 1, 0, 0.0)],
    ids=["unset", "float", "spaces", "at-minimum"],
)
def test_env_number(monkeypatch: pytest.MonkeyPatch, raw, default, minimum, expected):
    monkeypatch.setenv("GPUHUB_N", raw)
    assert env_number("GPUHUB_N", default, minimum) == expected


def _number(name: str) -> float:
    return env_number(name, 30, maximum=3600)


def _whole(name: str) -> int:
    return env_int(name, 1, minimum=1, maximum=64)


@pytest.mark.parametrize(
    "read, raw, message",
    [
        pytest.param(_number, "ten", "GPUHUB_N='ten' is not a number. Set it to a number such as 30.",
                     id="not-a-number"),
        pytest.param(_number, "-1", "GPUHUB_N='-1' is out of range. Set it to at least 0 and at most 3600.",
                     id="below-minimum"),
        pytest.param(_number, "4000", "GPUHUB_N='4000' is out of range. Set it to at least 0 and at most 3600.",
                     id="above-maximum"),
        pytest.param(_number, "nan", "GPUHUB_N='nan' is out of range. Set it to at least 0 and at most 3600.",
                     id="nan"),
        pytest.param(_whole, "1.5",
                     "GPUHUB_N='1.5' is not a whole number. Set it to a whole number from 1 to 64, such as 1.",
                     id="whole-fraction"),
        pytest.param(_whole, "four",
                     "GPUHUB_N='four' is not a whole number. Set it to a whole number from 1 to 64, such as 1.",
                     id="whole-word"),
        pytest.param(_whole, "0", "GPUHUB_N='0' is out of range. Set it to a whole number from 1 to 64.",
                     id="whole-below"),
        pytest.param(_whole, "65", "GPUHUB_N='65' is out of range. Set it to a whole number from 1 to 64.",
                     id="whole-above"),
    ],
)
def test_env_number_errors(monkeypatch: pytest.MonkeyPatch, read, raw, message):
    """env_number and env_int (whole numbers) refuse with the setting, the value and the range."""
    assert refusal(monkeypatch, "GPUHUB_N", raw, read) == message


@pytest.mark.parametrize(
    "raw, expected",
    [("", 8081), ("8000", 8000), ("1", 1), ("65535", 65535)],
    ids=["unset", "port", "lowest", "highest"],
)
def test_env_port(monkeypatch: pytest.MonkeyPatch, raw, expected):
    monkeypatch.setenv("GPUHUB_P", raw)
    assert env_port("GPUHUB_P", 8081) == expected


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "80.5", "8 0", " 8000", "1e3"])
def test_env_port_errors(monkeypatch: pytest.MonkeyPatch, raw):
    message = refusal(monkeypatch, "GPUHUB_P", raw, lambda n: env_port(n, 8081))
    assert message.startswith(f"GPUHUB_P={raw!r} ")
    assert "Set it to a port number" in message


def test_env_quota(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPUHUB_Q", '{"max_gpu_units": "2", "mem_limit": "4Gi"}')
    assert env_quota("GPUHUB_Q") == {"max_gpu_units": "2", "mem_limit": "4Gi"}


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            '{"max_gpu_units": "lots"}',
            "GPUHUB_Q: max_gpu_units: 'lots' is not a whole number ≥ 0 (or 'unlimited'). "
            "Fix the value of 'max_gpu_units' (or remove it).",
        ),
        (
            '{"max_session_hours": 100000}',
            "GPUHUB_Q: max_session_hours: 100000 is out of range: allowed more than 0 and at most 8,760 "
            "(or 'unlimited'). Fix the value of 'max_session_hours' (or remove it).",
        ),
        ('["max_gpu_units"]', "GPUHUB_Q: quota: ['max_gpu_units'] is not a mapping of quota fields."),
    ],
    ids=["word", "absurd", "not-a-mapping"],
)
def test_env_quota_errors(monkeypatch: pytest.MonkeyPatch, raw, message):
    assert refusal(monkeypatch, "GPUHUB_Q", raw, env_quota).startswith(message)


def test_read_token_file(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("0123456789abcdef0123\n")
    assert read_token_file("GPUHUB_T", str(path)) == "0123456789abcdef0123"


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "cannot read the token file"),
        ("short\n", "is shorter than 16 characters"),
        (b"\xff" * 20, "not text"),
    ],
    ids=["missing", "short", "binary"],
)
def test_read_token_file_errors(tmp_path: Path, content, problem):
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_token_file("GPUHUB_T", str(path))
    message = str(info.value)
    assert message.startswith("GPUHUB_T: ") and problem in message
    assert f"openssl rand -hex 32 > {path}" in message and "or unset GPUHUB_T." in message


# ---- check_spawner_config ------------------------------------------------------------------


def section(**settings) -> Config:
    c = Config()
    for key, value in settings.items():
        setattr(c.GPUDockerSpawner, key, value)
    return c.GPUDockerSpawner


def test_check_ok():
    inventory = check_spawner_config(
        section(
            gpu_inventory=[
                {"uuid": G0, "mig": [{"uuid": M0, "profile": "1g.10gb"}]},
                {"uuid": G0[:-1] + "1"},
            ],
            gpu_replicas_per_gpu=3,
            gpu_profiles=[{"slug": "slice", "pool": "mig-1g.10gb"}, {"slug": "shared", "pool": "shared"}],
            tutorials_source="/srv/tutorials",
        )
    )
    assert inventory.pool_names() == ["mig-1g.10gb", "shared"]
    assert inventory.pool_size("shared") == 3


def test_check_empty_section_is_a_cpu_only_hub():
    assert check_spawner_config(Config().GPUDockerSpawner).units == ()


@pytest.mark.parametrize(
    "settings, start",
    [
        ({"gpu_inventory": [{"uuid": "0"}]}, "c.GPUDockerSpawner.gpu_inventory[0]: '0' is not a GPU UUID"),
        ({"gpu_inventory": [{"uuid": G0, "replicas": 0}]}, "c.GPUDockerSpawner.gpu_inventory[0]: 'replicas'"),
        ({"gpu_inventory": G0}, "c.GPUDockerSpawner.gpu_inventory: must be a list of GPUs"),
        ({"gpu_inventory": [{"uuid": G0}, {"uuid": G0}]}, "c.GPUDockerSpawner.gpu_inventory: unit"),
        ({"gpu_replicas_per_gpu": 0}, "c.GPUDockerSpawner.gpu_replicas_per_gpu: 0 is not a whole number"),
        ({"gpu_replicas_per_gpu": "4"}, "c.GPUDockerSpawner.gpu_replicas_per_gpu: '4' is not"),
        (
            {"gpu_inventory": [{"uuid": G0}], "gpu_profiles": [{"slug": "a", "pool": "shared"}]},
            "c.GPUDockerSpawner.gpu_profiles[0]: pool 'shared' has no GPU units",
        ),
        ({"tutorials_source": "/srv/../etc"}, "c.GPUDockerSpawner.tutorials_source: host path"),
        ({"tutorials_source": "my volume"}, "c.GPUDockerSpawner.tutorials_source: 'my volume' is neither"),
        (
            {"gpu_profiles": [{"slug": "cpu", "pool": None, "cpu_limit": "two"}]},
            "c.GPUDockerSpawner.gpu_profiles[0] (GPUHUB_PROFILES) cpu_limit: 'two' is not a number > 0. Fix",
        ),
        (
            {"gpu_profiles": [{"slug": "cpu", "pool": None, "mem_limit": "4 gigs"}]},
            "c.GPUDockerSpawner.gpu_profiles[0] (GPUHUB_PROFILES) mem_limit: '4 gigs' is not a memory size",
        ),
        (
            {"gpu_profiles": [{"slug": "cpu", "pool": None, "mem_limit": "unlimited"}]},
            "c.GPUDockerSpawner.gpu_profiles[0] (GPUHUB_PROFILES) mem_limit: 'unlimited' is not a limit.",
        ),
        (
            {"gpu_profiles": [{"slug": "cpu", "pool": None, "cpu_limit": 4096}]},
            "c.GPUDockerSpawner.gpu_profiles[0] (GPUHUB_PROFILES) cpu_limit: 4096 is out of range: allowed",
        ),
        (
            {"quota_defaults": {"max_gpu_units": 10**6}},
            "c.GPUDockerSpawner.quota_defaults (GPUHUB_QUOTA_DEFAULTS): max_gpu_units: 1000000 is out of range",
        ),
    ],
    ids=[
        "bad-uuid",
        "replicas-0",
        "not-a-list",
        "duplicate",
        "default-replicas-0",
        "default-replicas-str",
        "profile-unknown-pool",
        "source-dotdot",
        "source-bad-volume",
        "profile-cpu-word",
        "profile-mem-word",
        "profile-mem-unlimited",
        "profile-cpu-absurd",
        "quota-defaults-absurd",
    ],
)
def test_check_errors_name_the_setting(settings, start):
    with pytest.raises(ConfigError) as info:
        check_spawner_config(section(**settings))
    assert str(info.value).startswith(start), str(info.value)


def test_check_accepts_a_named_volume_source():
    check_spawner_config(section(tutorials_source="gpuhub-tutorials"))


@pytest.mark.parametrize("mem_limit", ["4Gi", "4G", "4GB", "512M", "1.5G", 8 * 1024**2])
def test_check_accepts_the_quota_memory_grammar_in_profiles(mem_limit):
    """The start check, the quotas and the spawn read a profile's memory with one grammar."""
    profiles = [{"slug": "cpu", "pool": None, "mem_limit": mem_limit, "cpu_limit": "0.5"}]
    check_spawner_config(section(gpu_profiles=profiles))


# ---- shared_password -----------------------------------------------------------------------


def test_shared_password_generated_once(tmp_path: Path):
    data_dir = tmp_path / "data" / "nested"
    password, new = shared_password(data_dir)
    assert new is True
    assert len(password) >= 16
    path = data_dir / "shared-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == password + "\n"

    again, new_again = shared_password(data_dir)
    assert (again, new_again) == (password, False)
    assert shared_password(tmp_path / "other")[0] != password


def test_shared_password_kept_from_file(tmp_path: Path):
    (tmp_path / "pw").write_text("  chosen-by-admin \n")
    assert shared_password(tmp_path, "pw") == ("chosen-by-admin", False)
