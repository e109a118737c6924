"""The one base of the four services: where settings come from (gpuhub.yaml < environment < config file <
command line < keyword arguments) and a bad variable stopping a service with its name.

Its ``metrics`` handler (a token with ``read:metrics``) is tested against real hubs in the
culler, exporter and tutorial-sync tests."""

from __future__ import annotations

import json

import pytest

from hub_services.admin.app import AdminServiceApp
from hub_services.culler.app import CullerApp
from hub_services.exporter.app import HubExporterApp
from hub_services.tutorial_sync.app import TutorialSyncApp

APPS = [AdminServiceApp, CullerApp, HubExporterApp, TutorialSyncApp]


@pytest.fixture
def hub_env(monkeypatch):
    for key in ("JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_URL", "GPUHUB_QUOTA_DEFAULTS", "GPUHUB_HUB_ID", "GPUHUB_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "svc-token")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/x")
    return monkeypatch


@pytest.mark.parametrize("cls", APPS, ids=[c.name for c in APPS])
def test_every_service_reads_the_hubs_environment(hub_env, cls):
    app = cls()
    assert (app.api_token, app.url_prefix) == ("svc-token", "/services/x/")
    assert app.api_url == "http://127.0.0.1:8081/hub/api"  # unset: the hub's default
    assert app.service_url == f"http://127.0.0.1:{cls.default_port}"
    assert len({c.default_port for c in APPS}) == len(APPS)  # run by hand, side by side


def test_config_file_then_command_line_then_arguments_win_over_the_environment(hub_env, tmp_path):
    hub_env.setenv("GPUHUB_QUOTA_DEFAULTS", '{"period": "day"}')
    hub_env.setenv("GPUHUB_HUB_ID", "from-env")
    hub_env.setenv("GPUHUB_GPU_AGENT_URLS", "http://a:9445, http://b:9445")
    config = tmp_path / "culler.json"
    config.write_text(json.dumps({"CullerApp": {"hub_id": "from-file", "every": 5}}))
    app = CullerApp()
    app.initialize([f"--config={config}", "--every=7"])
    assert app.quota_defaults == {"period": "day"} and app.gpu_agent_urls == ["http://a:9445", "http://b:9445"]
    assert (app.hub_id, app.every) == ("from-file", 7)
    assert HubExporterApp(hub_id="from-kwargs").hub_id == "from-kwargs"


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("GPUHUB_QUOTA_DEFAULTS", "{oops", "GPUHUB_QUOTA_DEFAULTS: not valid JSON"),
        ("GPUHUB_QUOTA_DEFAULTS", "[1]", "GPUHUB_QUOTA_DEFAULTS must be a JSON object"),
        ("GPUHUB_PROFILES", '{"a": 1}', "GPUHUB_PROFILES must be a JSON list"),
        ("GPUHUB_REPLICAS_PER_GPU", "0", "GPUHUB_REPLICAS_PER_GPU='0' is out of range"),
    ],
)
def test_a_bad_variable_stops_the_service_naming_it(hub_env, variable, value, words):
    hub_env.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        HubExporterApp()
    assert str(stop.value).startswith("gpuhub-hub-exporter: ") and words in str(stop.value)


def test_bad_quota_defaults_stop_the_services_that_enforce_them(hub_env):
    hub_env.setenv("GPUHUB_QUOTA_DEFAULTS", '{"max_gpu_units": "lots"}')
    for cls in (AdminServiceApp, CullerApp):
        with pytest.raises(SystemExit, match="max_gpu_units: 'lots' is not a whole number.*fix GPUHUB_QUOTA_DEFAULTS"):
            cls().checked_quota_defaults()


def test_gpuhub_yaml_is_the_lowest_layer_and_its_culler_timings_win_over_the_cullers_own_file(hub_env, tmp_path):
    path = tmp_path / "gpuhub.yaml"
    path.write_text(
        "hub: {usage_db_url: 'sqlite:////srv/from-yaml.db'}\n"
        "quota_defaults: {period: week}\n"
        "culler: {every: 30, warn_seconds: 90}\n"
    )
    hub_env.setenv("GPUHUB_CONFIG", str(path))
    hub_env.setenv("GPUHUB_QUOTA_DEFAULTS", '{"period": "day"}')  # the hub changed it: over the file
    own = tmp_path / "culler.json"
    own.write_text(json.dumps({"CullerApp": {"every": 5, "idle_cpu_timeout": 99, "usage_db_url": "sqlite:////x.db"}}))
    app = CullerApp()
    app.initialize([f"--config={own}", "--warn-seconds=7"])
    assert app.quota_defaults == {"period": "day"}
    assert app.usage_db_url == "sqlite:////x.db"  # its own file is over gpuhub.yaml...
    assert (app.every, app.idle_cpu_timeout) == (30, 99)  # ...but not over the timings gpuhub.yaml sets
    assert app.warn_seconds == 7  # the command line over all
    assert AdminServiceApp().usage_db_url == "sqlite:////srv/from-yaml.db"
    assert "every" not in HubExporterApp().file_settings  # a service takes only its own traits


def test_a_bad_gpuhub_yaml_stops_the_service_with_config_checks_lines(hub_env, tmp_path, capsys):
    path = tmp_path / "gpuhub.yaml"
    path.write_text("culler: {every: -1}\n")
    hub_env.setenv("GPUHUB_CONFIG", str(path))
    with pytest.raises(SystemExit) as stop:
        CullerApp()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("gpuhub: configuration error: culler.every: -1")
