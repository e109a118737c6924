"""Settings read from the environment and checked while the hub loads its config."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from traitlets.config import Config

from gpuhub_spawner.hubconfig import ConfigError, check_spawner_config, env_json, env_number, shared_password

G0 = "GPU-00000000-1111-2222-3333-000000000000"
M0 = "MIG-00000000-1111-2222-3333-000000000010"


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


@pytest.mark.parametrize(
    "raw, message",
    [
        ("ten", "GPUHUB_N='ten' is not a number. Set it to a number such as 30."),
        ("-1", "GPUHUB_N='-1' must be at least 0."),
    ],
    ids=["not-a-number", "below-minimum"],
)
def test_env_number_errors(monkeypatch: pytest.MonkeyPatch, raw, message):
    monkeypatch.setenv("GPUHUB_N", raw)
    with pytest.raises(ConfigError) as info:
        env_number("GPUHUB_N", 30)
    assert str(info.value) == message


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
    ],
)
def test_check_errors_name_the_setting(settings, start):
    with pytest.raises(ConfigError) as info:
        check_spawner_config(section(**settings))
    assert str(info.value).startswith(start), str(info.value)


def test_check_accepts_a_named_volume_source():
    check_spawner_config(section(tutorials_source="gpuhub-tutorials"))


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
