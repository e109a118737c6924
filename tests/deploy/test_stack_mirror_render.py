"""The tutorial mirror in the rendered stack (pure), its generated secret and what `gpuhub deploy`
waits for.

With ``tutorials.repo`` the stack runs one mirror per GPU node (tests/deploy/test_stack_mirror.py
deploys it on the rig); it writes the node-local volume ``<stack>_tutorials``, which user servers
mount read-only (Docker makes a named volume on a node at first use: no host path to prepare).
"""

from __future__ import annotations

import os

import pytest
import yaml

from gpuhub_spawner.core.config import validate
from gpuhub_spawner.deploy import deploycli, secretstore, stack

STORE = "/srv/gpuhub/tutorials"  # in the mirror's container


def raw(**tutorials) -> dict:
    return {
        "tutorials": tutorials,
        "deploy": {"public_url": "https://workshop.example.org", "tls": {"mode": "internal"}, "stack_name": "ws"},
    }


@pytest.fixture
def doc() -> dict:
    return stack.render(validate(raw(repo="https://github.com/org/tutorials.git")), {}, "c1", manager="mgr-1")


def test_the_mirror_runs_on_every_gpu_node_from_the_agents_image(doc):
    mirror = doc["services"]["tutorial-mirror"]
    assert mirror["image"] == "gpuhub/node-agent:latest"
    assert mirror["entrypoint"] == ["python3", "-m", "gpuhub_spawner.node.tutorial_mirror"]
    assert mirror["deploy"]["mode"] == "global"
    assert "replicas" not in mirror["deploy"]
    # the GPU nodes as the operator labels them (Prometheus finds the node agents by it too)
    assert mirror["deploy"]["placement"] == {"constraints": ["node.labels.gpuhub.gpu == true"]}
    assert mirror["deploy"]["restart_policy"]["condition"] == "any"
    assert mirror["environment"] == {"NVIDIA_VISIBLE_DEVICES": "void"}  # no GPU for it


def test_the_mirror_fetches_through_the_proxy_never_on_the_user_network(doc):
    mirror = doc["services"]["tutorial-mirror"]
    assert mirror["networks"] == ["internal"]
    assert "users" not in mirror["networks"]
    assert doc["networks"]["internal"]["internal"] is True
    assert "proxy" in doc["services"]["hub"]["networks"]["internal"]["aliases"]
    command = mirror["command"]
    assert command[command.index("--url") + 1] == "http://proxy:8000/services/tutorial-sync/bundle"
    assert command[command.index("--store") + 1] == STORE
    assert command[command.index("--token-file") + 1] == "/run/secrets/tutorial_mirror_token"
    # the node's store, read-write for the mirror alone; nothing else of the node
    assert mirror["volumes"] == [f"tutorials:{STORE}"]
    assert doc["volumes"]["tutorials"] == {"name": "ws_tutorials"}
    assert not any("tutorials" in str(v) for v in doc["services"]["hub"]["volumes"])


def test_the_mirrors_token_is_a_generated_versioned_secret_the_hub_holds_too(doc):
    assert doc["secrets"]["tutorial_mirror_token"] == {"external": True, "name": "ws_tutorial_mirror_token_1"}
    assert doc["services"]["tutorial-mirror"]["secrets"] == [
        {"source": "tutorial_mirror_token", "target": "tutorial_mirror_token"}]
    assert {"source": "tutorial_mirror_token", "target": "tutorial_mirror_token"} in doc["services"]["hub"]["secrets"]
    assert "tutorial_mirror_token" in stack.secrets_needed(validate(raw(repo="https://g.example/t.git")))
    assert "tutorial_mirror_token" in secretstore.GENERATED
    versions = {"tutorial_mirror_token": "0123456789ab"}
    cfg = validate(raw(repo="https://g.example/t.git"))
    assert stack.render(cfg, versions)["secrets"]["tutorial_mirror_token"]["name"] == "ws_tutorial_mirror_token_0123456789ab"


def test_generated_once_kept_and_never_printed(tmp_path, capsys):
    value, how = secretstore.ensure(tmp_path / "s", "tutorial_mirror_token", {})
    assert how == "generated" and len(value) == 64
    assert os.stat(tmp_path / "s" / "tutorial_mirror_token").st_mode & 0o777 == 0o600
    assert secretstore.ensure(tmp_path / "s", "tutorial_mirror_token", {}) == (value, "kept")
    assert value.decode() not in capsys.readouterr().out


def test_servers_mount_the_nodes_store_and_the_hub_registers_the_mirror():
    cfg = validate(raw(repo="https://github.com/org/tutorials.git"))
    hub = stack.hub_config(cfg)
    validate(hub)
    # the spawner's read-only mount: the node's mirrored store (a volume name, not a host path)
    assert hub["tutorials"]["source"] == "ws_tutorials" == stack.tutorials_volume(cfg)
    assert hub["tutorials"]["mirror_token_file"] == "/run/secrets/tutorial_mirror_token"
    assert "store" not in hub["tutorials"]  # the sync service keeps publishing into the hub's volume


def test_no_repo_no_mirror():
    cfg = validate(raw())
    doc = stack.render(cfg)
    assert "tutorial-mirror" not in doc["services"] and "tutorial_mirror_token" not in doc["secrets"]
    assert "tutorials" not in doc["volumes"]
    assert "tutorials" not in stack.hub_config(cfg)


def test_the_deploy_does_not_wait_for_the_mirror(doc):
    # it runs on GPU nodes, which join after the first deploy: waiting would time out
    assert deploycli.waited_for(doc) == ["caddy", "db", "hub", "prometheus", "registry"]
    assert "tutorial-mirror" in yaml.safe_load(stack.to_yaml(doc))["services"]
