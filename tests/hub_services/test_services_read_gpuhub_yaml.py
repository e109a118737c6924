"""Every service reads gpuhub.yaml itself, and stops clearly where it cannot work.

- a setting only gpuhub.yaml holds (the culler's pass interval) reaches the running culler of a
  real hub: seen in the passes its own metrics count, not in any variable the test set;
- a bad file stops a service with the lines of ``gpuhub config check`` (exit 2, no traceback);
- a usage database migrated by a newer gpuhub stops a service, and the hub, at start with one
  line naming the problem and the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
import yaml
from harness import REPO, HubProcess, fake_gpus, free_port
from sqlalchemy import create_engine, text

from gpuhub_spawner.storage import db


def _write(path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _service_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "JUPYTERHUB_"))}
    env.update({"JUPYTERHUB_API_TOKEN": "t" * 32, "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
                "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api", **extra})
    return env


def _run_service(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _future_database(url: str) -> None:
    """A usage database stamped at a revision no gpuhub knows yet (a newer one migrated it)."""
    db.open_engine(url).dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {db.VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    engine.dispose()


@pytest.mark.docker
@pytest.mark.hub
def test_the_culler_runs_at_the_interval_gpuhub_yaml_sets(docker_client, tmp_path):
    """culler.every: 1 in the file alone (default 60): its metrics count a pass a second."""
    hub = HubProcess(
        tmp_path / "hub", {"gpu_inventory": fake_gpus(1, "cy")},
        'c.JupyterHub.load_roles.append({"name": "test-metrics", "scopes": ["read:metrics"], '
        '"services": ["gpuhub-test"]})\n',
    )
    path = _write(tmp_path / "gpuhub.yaml", {"culler": {"enabled": True, "every": 1}})
    culler = hub.url + "/services/gpuhub-culler/metrics"
    try:
        # the harness turns the culler off with a deprecated variable: blank, it counts as unset
        hub.start(env={"GPUHUB_CONFIG": path, "GPUHUB_CULLER": ""})

        def passes() -> float:
            r = requests.get(culler, headers={"Authorization": f"token {hub.token}"}, timeout=10)
            if r.status_code != 200:
                return -1
            return sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
                       if line.startswith("gpuhub_culler_passes_total"))

        deadline = time.monotonic() + 60
        while passes() < 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        first = passes()
        assert first >= 0, hub.log_tail()
        within = time.monotonic() + 6
        while passes() - first < 3 and time.monotonic() < within:
            time.sleep(0.2)
        assert passes() - first >= 3, hub.log_tail()  # 3 passes within 6 s; at the default 60 s: at most one
        # read from the file by the culler itself: the hub passed it on no command line
        model = requests.get(hub.url + "/hub/api/services/gpuhub-culler",
                             headers={"Authorization": f"token {hub.token}"}, timeout=10).json()
        assert model["command"] and not any("every" in part for part in model["command"]), model
        environ = open(f"/proc/{model['pid']}/environ", "rb").read().split(b"\0")  # noqa: SIM115
        assert f"GPUHUB_CONFIG={path}".encode() in environ
    finally:
        hub.cleanup(docker_client)


def test_a_bad_file_stops_a_service_in_the_words_of_config_check(tmp_path):
    path = _write(tmp_path / "gpuhub.yaml", {"culler": {"every": -5}, "tutorials": {"pol_interval": 3}})
    check = subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", "config", "check", path],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and len(check.stderr.splitlines()) == 2, check
    for module in ("hub_services.culler", "hub_services.tutorial_sync"):
        run = _run_service(module, _service_env(GPUHUB_CONFIG=path))
        assert run.returncode == 2, run
        assert run.stderr == check.stderr, run.stderr
        assert "Traceback" not in run.stderr + run.stdout


def test_a_database_from_a_newer_gpuhub_stops_a_service_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.sqlite'}"
    _future_database(url)
    path = _write(tmp_path / "gpuhub.yaml", {"hub": {"usage_db_url": url}})
    run = _run_service("hub_services.culler", _service_env(GPUHUB_CONFIG=path), "--no-docker")
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    line = [row for row in run.stderr.splitlines() if "9999_from_the_future" in row]
    assert len(line) == 1, run.stderr
    assert line[0].startswith("gpuhub-culler: The gpuhub database")
    assert "upgraded by a newer gpuhub" in line[0] and "restore the database from a backup" in line[0]


@pytest.mark.hub
def test_a_database_from_a_newer_gpuhub_stops_the_hub_at_start(tmp_path):
    hub = HubProcess(tmp_path / "hub", {"gpu_inventory": fake_gpus(1, "cz")})
    _future_database(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
    code, log = hub.start_refused()
    assert code == 2, log
    assert "Traceback" not in log, log
    line = [row for row in log.splitlines() if "9999_from_the_future" in row]
    assert len(line) == 1 and line[0].startswith("gpuhub: The gpuhub database"), log
    assert "Run that version, or restore the database from a backup" in line[0]
    assert "Starting managed service" not in log and "Proxy API at" not in log, log
