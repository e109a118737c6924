"""What the hub passes a service from gpuhub.yaml is what that service reads."""

from __future__ import annotations

from gpuhub_spawner.core import config


def test_the_culler_reads_the_timings_gpuhub_yaml_sets(tmp_path, monkeypatch) -> None:
    from hub_services.culler.app import CullerApp

    path = tmp_path / "gpuhub.yaml"
    path.write_text("culler:\n  every: 30\n  idle_cpu_timeout: 7200\n  idle_gpu_timeout: 600.5\n")
    monkeypatch.setenv("GPUHUB_CONFIG", str(path))
    app = CullerApp()
    app.initialize([])
    assert (app.every, app.idle_cpu_timeout, app.idle_gpu_timeout) == (30, 7200, 600.5)
    assert app.warn_seconds == CullerApp.warn_seconds.default_value  # not set: the culler's own


def test_the_tutorial_cap_reaches_tutorial_sync_in_its_unit() -> None:
    cfg = config.validate({"tutorials": {"max_total_size": "1.5G"}})
    assert cfg.tutorials.max_total_mb == 1536


def test_service_settings_use_the_service_trait_names() -> None:
    """Every name is a setting of one of the services, so each takes its own by name."""
    from hub_services.admin.app import AdminServiceApp
    from hub_services.culler.app import CullerApp
    from hub_services.exporter.app import HubExporterApp
    from hub_services.tutorial_sync.app import TutorialSyncApp

    traits = set().union(*(set(a.class_trait_names(config=True)) for a in
                           (AdminServiceApp, CullerApp, HubExporterApp, TutorialSyncApp)))
    cfg = config.validate({
        "hub": {"usage_db_url": "sqlite:////srv/u.db", "spawner": "swarm", "docker_host": "tcp://m:2376"},
        "quota_defaults": {"max_gpu_units": 1},
        "culler": {"gpu_agent_urls": ["http://n1:9400"], "warn_seconds": 60},
        "profiles": [{"slug": "cpu", "pool": None, "mem_limit": "4G"}],
        "tutorials": {"repo": "https://git.example/t.git"},
    })
    settings = config.service_settings(cfg)
    assert set(settings) <= traits
    assert settings["usage_db_url"] == "sqlite:////srv/u.db" and settings["spawner"] == "swarm"
    assert settings["gpu_profiles"] == [{"slug": "cpu", "pool": None, "mem_limit": "4G"}]
    assert settings["warn_seconds"] == 60 and settings["repo_url"] == "https://git.example/t.git"
    assert "gpu_inventory" not in settings and "every" not in settings  # unset: the service keeps its default
    assert config.service_settings(config.GPUHubConfig()) == {
        "gpu_discovery": "auto", "gpu_replicas_per_gpu": 1, "spawner": "docker",
        "branch": "main", "poll_interval": 60, "max_total_mb": 10240, "max_files": 100000,
    }


NEW_TIMINGS = {"budget_warn_seconds": 900, "reclaim_idle_timeout": 480, "reclaim_after": 300}


def test_the_culler_reads_budget_and_reclaim_timings_from_gpuhub_yaml(tmp_path, monkeypatch) -> None:
    """culler.budget_warn_seconds, reclaim_idle_timeout and reclaim_after as the README documents them."""
    from hub_services.culler.app import CullerApp

    path = tmp_path / "gpuhub.yaml"
    path.write_text("culler:\n" + "".join(f"  {k}: {v}\n" for k, v in NEW_TIMINGS.items()))
    monkeypatch.setenv("GPUHUB_CONFIG", str(path))
    app = CullerApp()
    app.initialize([])
    settings = app.settings()
    assert (settings.budget_warn_seconds, settings.reclaim_idle_seconds, settings.reclaim_after_seconds) == (
        900, 480, 300)


def test_the_culler_takes_the_command_line_the_hub_gives_it(monkeypatch) -> None:
    """Without a gpuhub.yaml file the hub passes the timings as options: each is one the culler knows."""
    from gpuhub_spawner.hub import managed_services
    from hub_services.culler.app import CullerApp

    monkeypatch.delenv("GPUHUB_CONFIG", raising=False)
    cfg = config.validate({"culler": NEW_TIMINGS})
    spec, _ = managed_services.culler(cfg.culler, {}, {}, {})
    options = [a for a in spec["command"] if a.startswith("--")]
    assert sorted(options) == ["--budget-warn-seconds=900", "--reclaim-after=300", "--reclaim-idle-timeout=480"]
    app = CullerApp()
    app.initialize(options)
    assert (app.budget_warn_seconds, app.reclaim_idle_timeout, app.reclaim_after) == (900, 480, 300)
