"""The hub-managed services' specs from gpuhub.yaml: least-privilege roles, no secret on a command line."""

from __future__ import annotations

from pathlib import Path

from gpuhub_spawner.core import config
from gpuhub_spawner.hub import managed_services


def test_roles_hold_only_the_scopes_each_service_uses() -> None:
    cfg = config.GPUHubConfig()
    _, admin = managed_services.admin(8766, {})
    _, exporter = managed_services.exporter(8768, {})
    _, culler = managed_services.culler(cfg.culler, {}, {})
    _, prometheus = managed_services.prometheus("t" * 32)
    assert admin["scopes"] == ["list:users", "read:users", "read:servers", "list:groups", "read:groups"]
    assert exporter["scopes"] == ["list:users", "read:users:groups", "read:servers", "list:groups", "read:groups"]
    assert "access:servers" not in culler["scopes"] and "admin:users" not in culler["scopes"]
    assert prometheus == {"name": "gpuhub-prometheus", "scopes": ["read:metrics"], "services": ["prometheus"]}


def test_tutorial_sync_takes_its_settings_on_the_command_line_and_secrets_in_the_environment() -> None:
    cfg = config.validate({"tutorials": {"repo": "https://git.example/t.git", "branch": "live", "port": 9765,
                                         "poll_interval": 30, "max_total_size": "2G", "max_files": 10}})
    secrets = {"GPUHUB_TUTORIALS_TOKEN": "s3cret-token", "GPUHUB_WEBHOOK_SECRET": "hook-secret"}
    spec = managed_services.tutorial_sync(cfg.tutorials, Path("/srv/store"), secrets)
    assert spec["url"] == "http://127.0.0.1:9765" and spec["environment"] == secrets
    assert spec["command"][-12:] == [
        "--repo", "https://git.example/t.git", "--branch", "live", "--store", "/srv/store",
        "--poll-interval", "30", "--max-total-mb", "2048", "--max-files", "10",
    ]
    assert not any("s3cret" in part or "hook-secret" in part for part in spec["command"])


def test_the_culler_gets_the_spawners_final_settings_and_the_files_timings() -> None:
    cfg = config.validate({"culler": {"port": 9767, "config_file": "/etc/c.json", "idle_gpu_timeout": 600,
                                      "gpu_agent_urls": ["http://n1:9400"], "gpu_agent_token_file": "/run/a"}})
    spawner = {"usage_db_url": "sqlite:////u.db", "quota_defaults": {"max_gpu_units": 1}, "gpu_hub_id": "course"}
    spec, _ = managed_services.culler(cfg.culler, spawner, {"GPUHUB_CONFIG": "/etc/gpuhub.yaml"})
    assert spec["command"][-3:] == ["--config", "/etc/c.json", "--idle-gpu-timeout=600"]
    assert spec["environment"] == {
        "GPUHUB_USAGE_DB_URL": "sqlite:////u.db",
        "GPUHUB_QUOTA_DEFAULTS": '{"max_gpu_units": 1}',
        "GPUHUB_HUB_ID": "course",
        "GPUHUB_GPU_AGENT_URLS": "http://n1:9400",
        "GPUHUB_GPU_AGENT_TOKEN_FILE": "/run/a",
        "GPUHUB_CONFIG": "/etc/gpuhub.yaml",
    }
