"""The NVIDIA container toolkit check of ``gpuhub node setup`` (gpuhub_spawner/node/toolkit.py):
version parsing, the decision table, the config.toml edit, and the command itself against a FAKE
``nvidia-container-runtime`` that prints a version (no toolkit exists here)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from gpuhub_spawner.cli import main
from gpuhub_spawner.node.toolkit import (
    ToolkitConfigError,
    ToolkitVersion,
    decide,
    parse_version,
    plan_runtime_config,
    set_legacy_mode,
)

#: what the real programs print (the runtime then execs runc's --version)
RUNTIME_1182 = "NVIDIA Container Runtime version 1.18.2\ncommit: 9e88ed39\nspec: 1.2.1\n\nrunc version 1.1.12\n"

#: the shape of the packaged /etc/nvidia-container-runtime/config.toml
STOCK = """#accept-nvidia-visible-devices-as-volume-mounts = false
#swarm-resource = "DOCKER_RESOURCE_GPU"
disable-require = false

[nvidia-container-cli]
environment = []
ldconfig = "@/sbin/ldconfig"

[nvidia-container-runtime]
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]

[nvidia-container-runtime.modes.cdi]
default-kind = "nvidia.com/gpu"
spec-dirs = ["/etc/cdi", "/var/run/cdi"]
"""


@pytest.mark.parametrize(
    "text, want",
    [
        pytest.param(RUNTIME_1182, ToolkitVersion(1, 18, 2), id="runtime"),
        pytest.param("NVIDIA Container Runtime Hook version 1.17.8\ncommit: abc\n", ToolkitVersion(1, 17, 8), id="hook"),
        pytest.param("NVIDIA Container Toolkit CLI version 1.19.0-rc.1\ncommit: x\n", ToolkitVersion(1, 19, 0, "rc.1"), id="ctk-rc"),
        pytest.param("runc version 1.1.12\ncommit: v1.1.12\n", None, id="plain-runc"),
        pytest.param("", None, id="nothing"),
    ],
)
def test_the_version_is_read_from_what_the_toolkit_prints(text, want):
    assert parse_version(text) == want


V = ToolkitVersion


@pytest.mark.parametrize(
    "version, mode, action",
    [
        # legacy maps swarm-resource in every version
        pytest.param(V(1, 18, 2), "legacy", "ok", id="1.18.2-legacy"),
        pytest.param(None, "legacy", "ok", id="unknown-legacy"),
        # before 1.18, auto meant legacy
        pytest.param(V(1, 17, 8), "auto", "ok", id="1.17.8-auto"),
        pytest.param(V(1, 17, 8), "cdi", "refuse", id="1.17.8-cdi"),
        pytest.param(V(1, 17, 8), "jit-cdi", "set-legacy", id="1.17.8-jit-cdi"),
        # the broken range: auto is jit-cdi, which ignores swarm-resource
        pytest.param(V(1, 18, 0), "auto", "set-legacy", id="1.18.0-auto"),
        pytest.param(V(1, 18, 0, "rc.3"), "auto", "set-legacy", id="1.18.0-rc-auto"),
        pytest.param(V(1, 18, 2), "auto", "set-legacy", id="1.18.2-auto"),
        pytest.param(V(1, 18, 2), "jit-cdi", "set-legacy", id="1.18.2-jit-cdi"),
        pytest.param(V(1, 18, 2), "cdi", "refuse", id="1.18.2-cdi"),
        pytest.param(V(1, 18, 1), "csv", "refuse", id="1.18.1-csv"),
        # fixed
        pytest.param(V(1, 18, 3), "auto", "ok", id="1.18.3-auto"),
        pytest.param(V(1, 19, 0), "jit-cdi", "ok", id="1.19.0-jit-cdi"),
        pytest.param(V(1, 19, 0), "cdi", "ok", id="1.19.0-cdi"),
        pytest.param(V(1, 19, 0, "rc.1"), "auto", "set-legacy", id="1.19.0-rc.1-auto"),
        pytest.param(V(1, 20, 0), "auto", "ok", id="1.20.0-auto"),
        # no version: only legacy is known to be safe
        pytest.param(None, "auto", "set-legacy", id="unknown-auto"),
        pytest.param(None, "cdi", "refuse", id="unknown-cdi"),
        pytest.param(V(1, 19, 0), "turbo", "refuse", id="unknown-mode"),
    ],
)
def test_the_decision_table(version, mode, action):
    verdict = decide(version, mode)
    assert verdict.action == action, verdict.reason
    if action == "refuse":
        assert "1.19.0" in verdict.reason and 'mode = "legacy"' in verdict.reason and "Nothing was changed" in verdict.reason
    if action != "ok":
        assert "1.18.0 to 1.18.2" in verdict.reason and "every GPU" in verdict.reason


def test_legacy_mode_is_set_in_its_table_keeping_every_other_line():
    out = set_legacy_mode(STOCK)
    assert tomllib.loads(out)["nvidia-container-runtime"]["mode"] == "legacy"
    assert tomllib.loads(out)["nvidia-container-runtime"]["modes"]["cdi"]["default-kind"] == "nvidia.com/gpu"
    changed = [(a, b) for a, b in zip(STOCK.splitlines(), out.splitlines()) if a != b]
    assert changed == [('mode = "auto"', 'mode = "legacy"')] and len(out.splitlines()) == len(STOCK.splitlines())
    assert set_legacy_mode(out) == out  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param('swarm-resource = "X"\n[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig"', id="no-table"),
        pytest.param('[nvidia-container-runtime]\nlog-level = "info"\n[other]\nmode = "x"\n', id="no-mode-key"),
        pytest.param('[nvidia-container-runtime]\ndiscover-mode = "auto"\n#mode = "cdi"\n', id="commented"),
    ],
)
def test_legacy_mode_is_added_where_the_key_or_table_is_missing(text):
    out = set_legacy_mode(text)
    parsed = tomllib.loads(out)
    assert parsed["nvidia-container-runtime"]["mode"] == "legacy"
    for key, value in tomllib.loads(text).items():  # nothing else changed meaning
        if key != "nvidia-container-runtime":
            assert parsed[key] == value
    assert parsed["nvidia-container-runtime"].get("discover-mode", "auto") == "auto"


def test_a_layout_the_edit_cannot_handle_is_refused_not_mangled():
    with pytest.raises(ToolkitConfigError, match="Set it by hand"):
        set_legacy_mode('nvidia-container-runtime = { mode = "auto" }\n')
    with pytest.raises(ToolkitConfigError, match="not valid TOML"):
        plan_runtime_config("[nvidia-container-runtime\n", RUNTIME_1182, "/etc/x.toml")


def test_plan_keeps_a_fixed_or_legacy_config_unchanged():
    text = STOCK.replace('mode = "auto"', 'mode = "legacy"')
    assert plan_runtime_config(text, RUNTIME_1182, "x")[0] == text
    fixed = RUNTIME_1182.replace("1.18.2", "1.19.0")
    assert plan_runtime_config(STOCK, fixed, "x")[0] == STOCK


# ---- the command -----------------------------------------------------------------------------


def _fake_runtime(tmp_path: Path, output: str) -> Path:
    """A FAKE nvidia-container-runtime that only answers --version."""
    path = tmp_path / "bin" / "nvidia-container-runtime"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _setup(tmp_path: Path, runtime: Path, *extra: str) -> list[str]:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps([{"uuid": "GPU-aa000000-0000-4000-8000-000000000001", "name": "L4"}]))
    return ["node", "setup", "--static", str(gpus), "--daemon-json", str(tmp_path / "daemon.json"),
            "--runtime-config", str(tmp_path / "config.toml"), "--runtime", str(runtime),
            "--restart-command", "true", *extra]


def test_setup_on_toolkit_1_18_2_sets_legacy_mode_shows_it_in_a_dry_run_and_is_idempotent(tmp_path, capsys):
    runtime = _fake_runtime(tmp_path, RUNTIME_1182)
    config = tmp_path / "config.toml"
    config.write_text(STOCK)
    assert main(_setup(tmp_path, runtime, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "toolkit 1.18.2 in mode 'auto' (jit-cdi) ignores swarm-resource" in out, out
    assert '-mode = "auto"\n+mode = "legacy"' in out, out
    assert config.read_text() == STOCK  # a dry run changes nothing

    assert main(_setup(tmp_path, runtime)) == 0
    written = tomllib.loads(config.read_text())
    assert written["nvidia-container-runtime"]["mode"] == "legacy"
    assert written["swarm-resource"] == "DOCKER_RESOURCE_NVIDIA_GPU"
    assert written["nvidia-container-cli"]["ldconfig"] == "@/sbin/ldconfig"
    assert (tmp_path / "config.toml.gpuhub-backup").read_text() == STOCK
    capsys.readouterr()
    after = config.read_text()
    assert main(_setup(tmp_path, runtime)) == 0
    out = capsys.readouterr().out
    assert config.read_text() == after and "swarm-resource is honoured" in out, out


def test_setup_refuses_an_explicit_cdi_mode_on_a_broken_toolkit_and_changes_nothing(tmp_path, capsys):
    runtime = _fake_runtime(tmp_path, RUNTIME_1182)
    config = tmp_path / "config.toml"
    config.write_text(STOCK.replace('mode = "auto"', 'mode = "cdi"'))
    before = config.read_text()
    assert main(_setup(tmp_path, runtime)) == 2
    err = capsys.readouterr().err
    assert "toolkit 1.18.2 in mode 'cdi' ignores swarm-resource" in err and "1.19.0 or later" in err, err
    assert config.read_text() == before and not (tmp_path / "daemon.json").exists()


def test_setup_on_a_fixed_toolkit_leaves_the_mode_alone(tmp_path, capsys):
    runtime = _fake_runtime(tmp_path, RUNTIME_1182.replace("1.18.2", "1.19.0"))
    (tmp_path / "config.toml").write_text(STOCK)
    assert main(_setup(tmp_path, runtime)) == 0
    assert tomllib.loads((tmp_path / "config.toml").read_text())["nvidia-container-runtime"]["mode"] == "auto"
    assert "toolkit 1.19.0, mode 'auto': swarm-resource is honoured" in capsys.readouterr().out
