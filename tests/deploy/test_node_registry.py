"""`gpuhub node setup --registry HOST:PORT`: a GPU node pulls the servers' images from the stack's
registry (plain HTTP, read-only; deploy/stack/README.md says why), kept with daemon.json's other keys."""

from __future__ import annotations

import json

import pytest
from nodesetup import setup_argv as _setup

from gpuhub_spawner.cli import main
from gpuhub_spawner.node.nodecli import SetupError, add_registry


@pytest.mark.parametrize("before,after", [
    ({}, ["10.0.0.5:5000"]),
    ({"insecure-registries": ["other:5000"]}, ["other:5000", "10.0.0.5:5000"]),
    ({"insecure-registries": ["10.0.0.5:5000"]}, ["10.0.0.5:5000"]),
], ids=["new", "kept-others", "once"])
def test_add_registry(before, after):
    assert add_registry(before, "10.0.0.5:5000")["insecure-registries"] == after
    assert add_registry(before, "") == before  # no --registry: daemon.json as it was


@pytest.mark.parametrize("bad", ["10.0.0.5", "http://10.0.0.5:5000", "a b:5000", "host:"])
def test_a_bad_registry_is_refused(bad):
    with pytest.raises(SetupError, match="is not HOST:PORT"):
        add_registry({}, bad)


def test_setup_writes_the_registry_and_a_second_run_changes_nothing(tmp_path, capsys):
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"log-driver": "json-file"}))
    assert main(_setup(tmp_path, "--registry", "10.0.0.5:5000")) == 0
    written = json.loads(daemon.read_text())
    assert written["insecure-registries"] == ["10.0.0.5:5000"] and written["log-driver"] == "json-file"
    capsys.readouterr()
    assert main(_setup(tmp_path, "--registry", "10.0.0.5:5000")) == 0
    assert "already up to date" in capsys.readouterr().out


def test_a_bad_registry_stops_setup_before_it_changes_anything(tmp_path, capsys):
    assert main(_setup(tmp_path, "--registry", "nope")) != 0
    assert not (tmp_path / "daemon.json").exists()
