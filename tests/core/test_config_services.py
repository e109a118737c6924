"""What the hub passes a service from gpuhub.yaml is what that service reads."""

from __future__ import annotations

from gpuhub_spawner.core import config


def test_the_culler_reads_the_timings_gpuhub_yaml_sets() -> None:
    from hub_services.culler.app import CullerApp

    cfg = config.validate({"culler": {"every": 30, "idle_cpu_timeout": 7200, "idle_gpu_timeout": 600.5}})
    options = cfg.culler.command_options()
    assert options == ["--every=30", "--idle-cpu-timeout=7200", "--idle-gpu-timeout=600.5"]
    app = CullerApp()
    app.parse_command_line(options)
    assert (app.every, app.idle_cpu_timeout, app.idle_gpu_timeout) == (30, 7200, 600.5)
    assert app.warn_seconds == CullerApp.warn_seconds.default_value  # not set: the culler's own


def test_the_tutorial_cap_reaches_tutorial_sync_in_its_unit() -> None:
    cfg = config.validate({"tutorials": {"max_total_size": "1.5G"}})
    assert cfg.tutorials.max_total_mb == 1536


def test_service_settings_use_the_service_trait_names() -> None:
    """Every name is a trait the services' base reads from the environment today, so one table serves both."""
    from hub_services.common.base import ENVIRONMENT

    cfg = config.validate({
        "hub": {"usage_db_url": "sqlite:////srv/u.db", "spawner": "swarm", "docker_host": "tcp://m:2376"},
        "quota_defaults": {"max_gpu_units": 1},
        "culler": {"gpu_agent_urls": ["http://n1:9400"]},
        "profiles": [{"slug": "cpu", "pool": None, "mem_limit": "4G"}],
    })
    settings = config.service_settings(cfg)
    assert set(settings) <= set(ENVIRONMENT)
    assert settings["usage_db_url"] == "sqlite:////srv/u.db" and settings["spawner"] == "swarm"
    assert settings["gpu_profiles"] == [{"slug": "cpu", "pool": None, "mem_limit": "4G"}]
    assert "gpu_inventory" not in settings  # empty: the service keeps its default
    assert config.service_settings(config.GPUHubConfig()) == {
        "gpu_discovery": "auto", "gpu_replicas_per_gpu": 1, "spawner": "docker"
    }
