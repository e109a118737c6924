"""The stack renderer (pure): gpuhub.yaml -> the swarm stack document, and the deploy section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuhub_spawner.core.config import ConfigFileError, check_file, validate
from gpuhub_spawner.deploy import stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "gpuhub.example.yaml"
COMMITTED = ROOT / "deploy" / "stack" / "gpuhub-stack.yml"
SECRET = "s3cr3t-value-that-must-never-appear-0123456789"


def config(**deploy) -> dict:
    base = {"public_url": "https://workshop.example.org", "tls": {"mode": "files", "cert_file": "/etc/t/c.pem",
                                                                  "key_file": "/etc/t/k.pem"}}
    return {"deploy": {**base, **deploy}}


def github(**deploy) -> dict:
    raw = config(**deploy)
    raw["sign_in"] = {"authenticator": "github", "github": {"client_id": "Iv1.abc"}}
    raw["tutorials"] = {"repo": "https://github.com/org/tutorials.git"}
    return raw


@pytest.fixture
def doc() -> dict:
    return stack.render(validate(github()), {"db_password": "abc123"}, "cfg1", manager="mgr-1")


def test_services_images_and_placement(doc):
    assert set(doc["services"]) == {"hub", "db", "registry", "caddy", "prometheus", "tutorial-mirror"}
    for name, service in doc["services"].items():
        if name == "tutorial-mirror":  # one per GPU node: tests/deploy/test_stack_mirror_render.py
            continue
        assert service["image"] == f"gpuhub/{'postgres' if name == 'db' else name}:latest"
        constraints = service["deploy"]["placement"]["constraints"]
        assert "node.role == manager" in constraints, name
        assert "node.hostname == mgr-1" in constraints, name  # stateful: pinned to its volumes' node
        assert service["deploy"]["restart_policy"]["condition"] == "any"
        assert service["deploy"]["restart_policy"]["delay"] == "5s"
        assert "max_attempts" not in service["deploy"]["restart_policy"]  # never gives up for good
        assert service["deploy"]["endpoint_mode"] == "dnsrr"  # no IPVS: no virtual IPs
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_hub_uses_the_socket_never_tcp(doc):
    hub = doc["services"]["hub"]
    assert {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"} in hub["volumes"]
    assert "hub-data:/srv/gpuhub/data" in hub["volumes"]
    text = yaml.safe_dump(doc)
    assert "tcp://" not in text and "2375" not in text and "2376" not in text
    assert "DOCKER_HOST" not in text


def test_networks_keep_users_away_from_internal_services(doc):
    nets = doc["networks"]
    assert nets["internal"] == {"driver": "overlay", "internal": True}
    assert nets["users"] == {"driver": "overlay", "attachable": True}
    on_users = [n for n, s in doc["services"].items() if "users" in s["networks"]]
    assert on_users == ["hub"]  # db, registry, prometheus, caddy never on the user network
    for name in ("db", "registry", "prometheus"):
        assert "internal" in doc["services"][name]["networks"]
    assert doc["services"]["db"]["networks"] == ["internal"]
    assert doc["services"]["hub"]["networks"]["users"] == {"aliases": ["gpuhub-hub"]}
    assert doc["services"]["hub"]["hostname"] == "gpuhub-hub"  # resolves in the hub before swarm's DNS does


def test_ports_in_host_mode_and_registry_read_only(doc):
    caddy = doc["services"]["caddy"]
    assert [(p["published"], p["mode"]) for p in caddy["ports"]] == [(80, "host"), (443, "host")]
    registry = doc["services"]["registry"]
    assert registry["ports"] == [{"target": 5000, "published": 5000, "protocol": "tcp", "mode": "host"}]
    assert registry["environment"] == {"GPUHUB_REGISTRY_READONLY": "true"}
    published = [n for n, s in doc["services"].items() if s.get("ports")]
    assert sorted(published) == ["caddy", "registry"]  # the db, hub and prometheus publish nothing


def test_secrets_are_external_versioned_and_read_from_files(doc):
    secrets = doc["secrets"]
    assert set(secrets) == {"crypt_key", "prometheus_token", "agent_token", "github_client_secret",
                            "webhook_secret", "tutorial_mirror_token", "db_password", "tls_cert", "tls_key"}
    assert secrets["db_password"] == {"external": True, "name": "gpuhub_db_password_abc123"}
    assert secrets["crypt_key"]["name"] == "gpuhub_crypt_key_1"
    env = doc["services"]["hub"]["environment"]
    assert env["JUPYTERHUB_CRYPT_KEY_FILE"] == "/run/secrets/crypt_key"
    assert env["GITHUB_CLIENT_SECRET_FILE"] == "/run/secrets/github_client_secret"
    assert env["GPUHUB_WEBHOOK_SECRET_FILE"] == "/run/secrets/webhook_secret"
    assert env["PGPASSWORD_FILE"] == "/run/secrets/db_password"
    assert doc["services"]["db"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert [s["target"] for s in doc["services"]["caddy"]["secrets"]] == ["tls_cert", "tls_key"]
    assert {s["source"] for s in doc["services"]["prometheus"]["secrets"]} == {"prometheus_token", "agent_token"}
    assert doc["configs"]["gpuhub_yaml"]["name"] == "gpuhub_gpuhub_yaml_cfg1"


def test_volumes(doc):
    assert set(doc["volumes"]) == {"hub-data", "db-data", "registry-data", "prometheus-data", "caddy-data",
                                   "tutorials"}  # the mirror's, on each GPU node


def test_no_secret_value_in_the_document(monkeypatch):
    monkeypatch.setenv("GITHUB_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", SECRET)
    cfg = validate(github())
    text = stack.to_yaml(stack.render(cfg)) + yaml.safe_dump(stack.hub_config(cfg))
    assert SECRET not in text


def test_hub_config_for_the_stack_is_valid_and_says_what_the_stack_decides():
    cfg = validate(github())
    raw = stack.hub_config(cfg)
    validate(raw)  # the hub reads it: it must pass the same checks
    assert raw["hub"]["spawner"] == "swarm" and raw["hub"]["user_network"] == "gpuhub_users"
    assert raw["hub"]["db_url"] == "postgresql+psycopg://gpuhub@db:5432/gpuhub"  # password: PGPASSWORD
    assert raw["metrics"]["prometheus_token_file"] == "/run/secrets/prometheus_token"
    assert raw["sign_in"]["github"]["callback_url"] == "https://workshop.example.org/hub/oauth_callback"


def test_sqlite_trial_has_no_db_service():
    cfg = validate(config(database="sqlite", tls={"mode": "internal"}))
    doc = stack.render(cfg)
    assert "db" not in doc["services"] and "db-data" not in doc["volumes"]
    assert "db_password" not in doc["secrets"] and "tls_cert" not in doc["secrets"]
    assert "PGPASSWORD_FILE" not in doc["services"]["hub"]["environment"]
    assert "db_url" not in stack.hub_config(cfg)["hub"]


def test_acme_passes_the_email_to_caddy():
    doc = stack.render(validate(config(tls={"mode": "acme", "acme_email": "ops@example.org"})))
    env = doc["services"]["caddy"]["environment"]
    assert env == {"GPUHUB_DOMAIN": "workshop.example.org", "GPUHUB_TLS": "acme",
                   "GPUHUB_UPSTREAM": "proxy:8000", "GPUHUB_ACME_EMAIL": "ops@example.org"}


@pytest.mark.parametrize("deploy,expected", [
    ({"public_url": "http://workshop.example.org"}, "deploy.public_url: 'http://workshop.example.org' is not an https"),
    ({"public_url": "https://w.example.org/hub"}, "deploy.public_url:"),
    ({"tls": {"mode": "files"}}, "deploy.tls.cert_file: '' is not an absolute path"),
    ({"tls": {"mode": "acme"}}, "deploy.tls.acme_email: '' is not an email address"),
    ({"public_url": "https://10.0.0.5", "tls": {"mode": "acme", "acme_email": "a@b.org"}}, "deploy.tls.mode: acme needs"),
    ({"tls": {"mode": "internal", "cert_file": "/a"}}, "deploy.tls.cert_file: set, but mode is 'internal'"),
    ({"database": "mysql"}, "deploy.database: 'mysql'"),
    ({"stack_name": "Bad Name"}, "deploy.stack_name: 'Bad Name' is not a stack name"),
    ({"secrets_dir": "secrets"}, "deploy.secrets_dir: 'secrets' is not an absolute path"),
    ({"registry_port": 0}, "deploy.registry_port: 0"),
    ({"push_images": ["evil/miner:latest"]}, "deploy.push_images[0]: 'evil/miner:latest' is not an image"),
    ({"regsitry_port": 5000}, "deploy.regsitry_port: unknown key"),
], ids=["http", "path", "files-no-cert", "acme-no-email", "acme-ip", "cert-not-files", "db", "stack", "relative",
        "port", "push-not-allowed", "typo"])
def test_a_bad_deploy_section_is_refused(deploy, expected):
    with pytest.raises(ConfigFileError) as e:
        validate(config(**deploy))
    assert any(line.startswith(expected) for line in e.value.lines), e.value.lines


def test_config_check_names_the_key(tmp_path):
    bad = tmp_path / "gpuhub.yaml"
    bad.write_text(yaml.safe_dump(config(tls={"mode": "acme"})))
    done = subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", "config", "check", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "gpuhub: configuration error: deploy.tls.acme_email:" in done.stderr


def test_deploy_refuses_a_bad_config_before_any_engine(tmp_path):
    bad = tmp_path / "gpuhub.yaml"
    bad.write_text(yaml.safe_dump(config(public_url="http://x")))
    done = subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", "deploy", "--config", str(bad)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent"})
    assert done.returncode == 2
    assert "deploy.public_url: 'http://x' is not an https URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_committed_stack_file_is_current():
    """deploy/stack/gpuhub-stack.yml is `gpuhub deploy --config deploy/gpuhub.example.yaml --render`."""
    done = subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", "deploy", "--config",
                           "deploy/gpuhub.example.yaml", "--render"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert COMMITTED.read_text() == done.stdout, (
        "deploy/stack/gpuhub-stack.yml is stale: run gpuhub deploy --config deploy/gpuhub.example.yaml "
        "--render > deploy/stack/gpuhub-stack.yml"
    )
    assert check_file(EXAMPLE).deploy is not None


def test_in_the_stack_the_hub_is_public_https_with_secure_cookies(monkeypatch, tmp_path):
    from traitlets.config import Config

    from gpuhub_spawner.deploy import inhub

    monkeypatch.setattr(inhub, "container_address", lambda network: {"gpuhub_internal": "10.0.3.7"}[network])
    monkeypatch.setattr(inhub, "HEALTH_URL_FILE", str(tmp_path / "health-url"))
    c = Config()
    c.JupyterHub.tornado_settings = {"cookie_options": {"samesite": "Lax"}, "slow_spawn_timeout": 5}
    inhub.apply(c, "gpuhub", "https://workshop.example.org")
    assert c.JupyterHub.public_url == "https://workshop.example.org/"
    assert c.JupyterHub.tornado_settings == {"cookie_options": {"samesite": "Lax", "secure": True},
                                             "slow_spawn_timeout": 5}
    assert c.JupyterHub.bind_url == "http://10.0.3.7:8000"  # the proxy on the internal network only
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8081"
    assert c.JupyterHub.hub_connect_url == "http://gpuhub-hub:8081"
    assert c.GPUSwarmSpawner.network_name == "gpuhub_users" and c.GPUSwarmSpawner.use_internal_ip is True
    assert (tmp_path / "health-url").read_text() == "http://10.0.3.7:8000/hub/health\n"  # the health check's


def test_in_the_stack_a_start_is_answered_within_half_a_second_unless_the_operator_says_otherwise(
        monkeypatch, tmp_path):
    from traitlets.config import Config

    from gpuhub_spawner.deploy import inhub

    monkeypatch.setattr(inhub, "container_address", lambda network: "10.0.3.7")
    monkeypatch.setattr(inhub, "HEALTH_URL_FILE", str(tmp_path / "health-url"))
    c = Config()
    inhub.apply(c, "gpuhub", "https://workshop.example.org")
    # JupyterHub's own default holds a Start for 10 s before its first answer
    assert c.JupyterHub.tornado_settings["slow_spawn_timeout"] == inhub.FIRST_ANSWER_SECONDS < 1


def test_the_hub_finds_its_own_container_by_its_mounts_not_its_host_name():
    from gpuhub_spawner.deploy.inhub import own_container_id

    cid = "a" * 12 + "0123456789abcdef" * 3 + "b" * 4
    mountinfo = (
        "613 598 0:53 / / rw,relatime - overlay overlay rw\n"
        f"640 613 8:1 /var/lib/docker/containers/{cid}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
        f"641 613 8:1 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
    )
    assert own_container_id(mountinfo) == cid
