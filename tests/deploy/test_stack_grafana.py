"""Grafana in the stack by its upstream image name (deploy.grafana_image; pure render tests).

Grafana cannot be installed or pulled where these tests run, so no test starts it: these check
the service document, and the dashboards' queries are evaluated against a real Prometheus in
tests/hub_services/test_exporter_prometheus.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuhub_spawner.core.config import ConfigFileError, check_file, validate
from gpuhub_spawner.deploy import grafana, stack

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "grafana/grafana-oss:11.3.0"


def config(**deploy) -> dict:
    return {"deploy": {"public_url": "https://workshop.example.org", "tls": {"mode": "internal"}, **deploy}}


def test_no_grafana_unless_asked():
    doc = stack.render(validate(config()))
    assert "grafana" not in doc["services"]
    assert not [c for c in doc["configs"] if c.startswith("grafana")]
    assert grafana.SECRET not in doc["secrets"]
    assert "GPUHUB_GRAFANA_UPSTREAM" not in doc["services"]["caddy"]["environment"]


def test_grafana_by_its_upstream_name_behind_caddy_on_the_internal_network_only():
    versions = {"grafana_overview": "0123abcd4567"}
    doc = stack.render(validate(config(grafana_image=IMAGE)), manager="mgr-1", file_versions=versions)
    service = doc["services"]["grafana"]
    assert service["image"] == IMAGE
    assert service["networks"] == ["internal"]  # never the users' network; no published port
    assert "ports" not in service
    assert "node.hostname == mgr-1" in service["deploy"]["placement"]["constraints"]  # its volume's node
    env = service["environment"]
    assert env["GF_SERVER_ROOT_URL"] == "https://workshop.example.org/grafana/"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"/run/secrets/{grafana.SECRET}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert doc["services"]["caddy"]["environment"]["GPUHUB_GRAFANA_UPSTREAM"] == "grafana:3000"
    # the password is a generated secret; the files are configs named by their content's digest
    assert grafana.SECRET in stack.secrets_needed(validate(config(grafana_image=IMAGE)))
    assert doc["secrets"][grafana.SECRET]["name"] == f"gpuhub_{grafana.SECRET}_1"
    assert doc["configs"]["grafana_overview"]["name"] == "gpuhub_grafana_overview_0123abcd4567"
    targets = {c["source"]: c["target"] for c in service["configs"]}
    assert targets == {name: target for name, (_src, target) in grafana.FILES.items()}
    assert "grafana-data" in doc["volumes"]


def test_the_files_it_provisions_exist_and_point_at_the_stacks_prometheus():
    for source, _target in grafana.FILES.values():
        assert (ROOT / source).is_file(), source
    datasource = yaml.safe_load((ROOT / grafana.FILES["grafana_datasource"][0]).read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / grafana.FILES["grafana_dashboards"][0]).read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert all(target.startswith(folder + "/") for name, (_s, target) in grafana.FILES.items()
               if target.endswith(".json"))


def test_a_bad_image_reference_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump(config(grafana_image="Grafana Latest!")))
    with pytest.raises(ConfigFileError) as e:
        check_file(str(path))
    text = "\n".join(e.value.lines)
    assert "deploy.grafana_image" in text and "grafana/grafana-oss" in text, text
