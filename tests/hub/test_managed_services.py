"""The hub-managed services' specs from gpuhub.yaml: least-privilege roles, no secret on a command line."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpuhub_spawner.core import config
from gpuhub_spawner.hub import managed_services
from hub_services.tutorial_sync.app import TutorialSyncApp


def test_roles_hold_only_the_scopes_each_service_uses() -> None:
    cfg = config.GPUHubConfig()
    _, admin = managed_services.admin(8766, {}, {}, {})
    _, exporter = managed_services.exporter(8768, {}, {}, {})
    _, culler = managed_services.culler(cfg.culler, {}, {}, {})
    _, prometheus = managed_services.prometheus("t" * 32)
    assert admin["scopes"] == ["list:users", "read:users", "read:servers", "list:groups", "read:groups"]
    assert exporter["scopes"] == ["list:users", "read:users:groups", "read:servers", "list:groups", "read:groups"]
    assert "access:servers" not in culler["scopes"] and "admin:users" not in culler["scopes"]
    assert prometheus == {"name": "gpuhub-prometheus", "scopes": ["read:metrics"], "services": ["prometheus"]}


def test_instructor_help_roles_and_the_admin_service_options() -> None:
    service, _ = managed_services.admin(8766, {}, {}, {})
    roles = managed_services.instructor_help(service, config.Instructors(group="tas"))
    assert service["command"][-2:] == ["--instructors-group=tas", "--help-access=full"]
    assert roles == [
        # the service grants shares; JupyterHub lets it grant only access it holds
        {"name": "gpuhub-admin-help", "scopes": ["shares", "access:servers", "read:users:shares"],
         "services": ["gpuhub-admin"]},
        # instructors reach the admin service (its Help tab alone), nothing more
        {"name": "gpuhub-instructors", "scopes": ["access:services!service=gpuhub-admin"], "groups": ["tas"]},
    ]
    service, _ = managed_services.admin(8766, {}, {}, {})
    assert managed_services.instructor_help(service, config.Instructors(group="")) == []  # off: no scope at all
    assert "--instructors-group=" in service["command"]


TUTORIALS = {"repo": "https://git.example/t.git", "branch": "live", "port": 9765,
             "poll_interval": 30, "max_total_size": "2G", "max_files": 10}


def _written(tmp_path: Path, raw: dict) -> dict[str, str]:
    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return {"GPUHUB_CONFIG": str(path)}


def test_tutorial_sync_reads_its_settings_in_the_file_and_gets_secrets_in_the_environment(tmp_path) -> None:
    environ = _written(tmp_path, {"tutorials": TUTORIALS})
    cfg, from_file = config.load_config(environ=environ), config.file_settings(environ)
    secrets = {"GPUHUB_TUTORIALS_TOKEN": "s3cret-token", "GPUHUB_WEBHOOK_SECRET": "hook-secret"}
    spec = managed_services.tutorial_sync(cfg, Path("/srv/store"), secrets, from_file)
    assert spec["url"] == "http://127.0.0.1:9765" and spec["environment"] == secrets
    # the store only the hub knows; the rest the service reads in the file, as its own traits
    assert spec["command"][-2:] == ["--store", "/srv/store"]
    assert (from_file["repo_url"], from_file["branch"], from_file["poll_interval"]) == (TUTORIALS["repo"], "live", 30)
    assert (from_file["max_total_mb"], from_file["max_files"]) == (2048, 10)
    assert not any("s3cret" in part or "hook-secret" in part for part in spec["command"])


def test_tutorial_settings_a_deprecated_variable_changed_go_on_the_command_line(tmp_path) -> None:
    environ = {**_written(tmp_path, {"tutorials": TUTORIALS}), "GPUHUB_TUTORIALS_POLL_INTERVAL": "15"}
    cfg = config.load_config(environ=environ, notify=lambda line: None)
    spec = managed_services.tutorial_sync(cfg, Path("/srv/store"), {}, config.file_settings(environ))
    assert spec["command"][-3:] == ["--store", "/srv/store", "--poll-interval=15"]
    # without a file the service reads nothing: everything set travels
    spec = managed_services.tutorial_sync(cfg, Path("/srv/store"), {}, {})
    options = spec["command"][-7:]
    assert options == [
        "--store", "/srv/store", "--repo=https://git.example/t.git", "--branch=live",
        "--poll-interval=15", "--max-total-mb=2048", "--max-files=10",
    ]
    app = TutorialSyncApp()
    app.parse_command_line(options)
    assert (app.repo_url, app.branch, app.poll_interval, app.max_total_mb, app.max_files) == (
        TUTORIALS["repo"], "live", 15, 2048, 10,
    )


CULLER = {"port": 9767, "config_file": "/etc/c.json", "idle_gpu_timeout": 600,
          "gpu_agent_urls": ["http://n1:9400"], "gpu_agent_token_file": "/run/a"}


def test_the_culler_reads_the_file_and_gets_only_what_the_hub_changed(tmp_path) -> None:
    environ = _written(tmp_path, {"culler": CULLER, "quota_defaults": {"max_gpu_units": 1}})
    cfg, from_file = config.load_config(environ=environ), config.file_settings(environ)
    wiring = managed_services.file_wiring(environ)
    # the hub's final spawner: its usage database in its data directory, the quota as the file says
    spawner = {"usage_db_url": "sqlite:////u.db", "quota_defaults": {"max_gpu_units": 1}, "gpu_hub_id": "course"}
    spec, _ = managed_services.culler(cfg.culler, spawner, from_file, wiring)
    assert spec["command"][-2:] == ["--config", "/etc/c.json"]
    assert from_file["idle_gpu_timeout"] == 600 and from_file["gpu_agent_urls"] == ["http://n1:9400"]
    assert spec["environment"] == {
        "GPUHUB_USAGE_DB_URL": "sqlite:////u.db",
        "GPUHUB_HUB_ID": "course",
        "GPUHUB_GPU_AGENT_TOKEN_FILE": "/run/a",
        "GPUHUB_CONFIG": str((tmp_path / "gpuhub.yaml").resolve()),
    }
    # an operator's extra config changed the quota: the final one travels, over the file's
    spawner["quota_defaults"] = {"max_gpu_units": 2}
    spec, _ = managed_services.culler(cfg.culler, spawner, from_file, wiring)
    assert spec["environment"]["GPUHUB_QUOTA_DEFAULTS"] == '{"max_gpu_units": 2}'


def test_without_a_file_the_culler_gets_every_setting_as_before() -> None:
    cfg = config.validate({"culler": CULLER})
    spawner = {"usage_db_url": "sqlite:////u.db", "quota_defaults": {"max_gpu_units": 1}, "gpu_hub_id": "course"}
    spec, _ = managed_services.culler(cfg.culler, spawner, {}, {})
    assert spec["command"][-3:] == ["--config", "/etc/c.json", "--idle-gpu-timeout=600"]
    assert spec["environment"] == {
        "GPUHUB_USAGE_DB_URL": "sqlite:////u.db",
        "GPUHUB_QUOTA_DEFAULTS": '{"max_gpu_units": 1}',
        "GPUHUB_HUB_ID": "course",
        "GPUHUB_GPU_AGENT_URLS": "http://n1:9400",
        "GPUHUB_GPU_AGENT_TOKEN_FILE": "/run/a",
    }


def test_the_exporter_gets_what_the_spawner_has_and_the_file_does_not_say(tmp_path) -> None:
    gpus = [{"uuid": "GPU-00000000-0000-4000-8000-000000000000", "name": "NVIDIA A100 40GB", "memory_mb": 40960}]
    environ = _written(tmp_path, {"inventory": {"discovery": "static", "gpus": gpus}})
    from_file = config.file_settings(environ)
    spawner = {"usage_db_url": "sqlite:////u.db", "quota_defaults": {}, "gpu_inventory": gpus,
               "gpu_discovery": "static", "gpu_replicas_per_gpu": 2, "gpu_profiles": []}
    spec, _ = managed_services.exporter(8768, spawner, from_file, {"GPUHUB_CONFIG": "/etc/gpuhub.yaml"})
    assert spec["environment"] == {
        "GPUHUB_USAGE_DB_URL": "sqlite:////u.db",
        "GPUHUB_REPLICAS_PER_GPU": "2",  # the extra config changed it
        "GPUHUB_CONFIG": "/etc/gpuhub.yaml",
    }


def test_a_service_reads_the_file_as_the_hub_did(tmp_path) -> None:
    """GITHUB_CLIENT_ID completes a file that names GitHub sign-in: it goes along with the path."""
    environ = {**_written(tmp_path, {"sign_in": {"authenticator": "github"}}), "GITHUB_CLIENT_ID": "abc"}
    assert managed_services.file_wiring(environ)["GITHUB_CLIENT_ID"] == "abc"
    assert config.file_settings(managed_services.file_wiring(environ))["spawner"] == "docker"
    assert managed_services.file_wiring({}) == {}


def test_on_a_swarm_the_exporter_gets_the_hub_id_and_docker_client_settings(tmp_path) -> None:
    environ = _written(tmp_path, {"hub": {"spawner": "swarm", "docker_host": "tcp://m:2376"}})
    from_file = config.file_settings(environ)
    spawner = {"gpu_hub_id": "course", "client_kwargs": {"base_url": "tcp://m:2376"}}
    docker_env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/etc/docker/tls", "HOME": "/root"}
    env = managed_services.swarm_environment(spawner, {}, docker_env, from_file)
    assert env == {"GPUHUB_HUB_ID": "course", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/etc/docker/tls"}
    # set by deprecated variables only (no file): the exporter is told it is a swarm and where
    env = managed_services.swarm_environment(spawner, {}, docker_env, {})
    assert (env["GPUHUB_SPAWNER"], env["GPUHUB_DOCKER_HOST"]) == ("swarm", "tcp://m:2376")
