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
