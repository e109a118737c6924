"""Bad settings stop the real hub at start with the setting's name and the fix; no traceback.

Each case starts ``jupyterhub -f jupyterhub_config.py`` (as ``deploy/gpuhub-up`` does) with one
bad environment variable, and checks the exit code, the one-line message and that nothing
started. A profile's ``mem_limit: "4Gi"`` in the deprecated variable is still accepted, and a
spawn with it gets 4 GiB. A bad gpuhub.yaml stops the hub with the lines ``gpuhub config check``
prints; a good one drives it.
"""

from __future__ import annotations

import json

import pytest
from harness import HubProcess, container_of

pytestmark = [pytest.mark.hub]

CPU_PROFILE = {"slug": "cpu", "display_name": "CPU only", "pool": None}

# (environment, text that must be in the message: the setting's name and what to do)
BAD_SETTINGS = [
    pytest.param(
        {"GPUHUB_QUOTA_DEFAULTS": '{"max_gpu_units": "lots"}'},
        [
            "GPUHUB_QUOTA_DEFAULTS: max_gpu_units: 'lots' is not a whole number",
            "Fix the value of 'max_gpu_units'",
        ],
        id="quota-defaults-word",
    ),
    pytest.param(
        {"GPUHUB_QUOTA_DEFAULTS": '{"gpu_hours_per_period": 1e12}'},
        ["GPUHUB_QUOTA_DEFAULTS: gpu_hours_per_period:", "out of range: allowed from 0 to 1,000,000"],
        id="quota-defaults-absurd",
    ),
    pytest.param(
        {"GPUHUB_QUOTA_DEFAULTS": '{"max_gpu_units": -1}'},
        ["GPUHUB_QUOTA_DEFAULTS: max_gpu_units: -1"],
        id="quota-defaults-negative",
    ),
    pytest.param(
        {"GPUHUB_HUB_PORT": "abc"},
        ["GPUHUB_HUB_PORT='abc' is not a port. Set it to a port number from 1 to 65535"],
        id="hub-port-word",
    ),
    pytest.param(
        {"GPUHUB_PROXY_API_PORT": "70000"}, ["GPUHUB_PROXY_API_PORT='70000' is not a port"], id="proxy-port"
    ),
    pytest.param(
        {"GPUHUB_ADMIN_SERVICE_PORT": "8o8o"}, ["GPUHUB_ADMIN_SERVICE_PORT='8o8o'"], id="admin-port"
    ),
    pytest.param({"GPUHUB_CULLER_PORT": "-1"}, ["GPUHUB_CULLER_PORT='-1' is not a port"], id="culler-port"),
    pytest.param({"GPUHUB_EXPORTER_PORT": "metrics"}, ["GPUHUB_EXPORTER_PORT='metrics'"], id="exporter-port"),
    pytest.param(
        {"GPUHUB_TUTORIAL_SYNC_PORT": "0", "GPUHUB_TUTORIALS_REPO": "/nonexistent/repo.git"},
        ["GPUHUB_TUTORIAL_SYNC_PORT='0' is not a port"],
        id="tutorial-sync-port",
    ),
    pytest.param(
        {"GPUHUB_TUTORIALS_POLL_INTERVAL": "hourly", "GPUHUB_TUTORIALS_REPO": "/nonexistent/repo.git"},
        ["GPUHUB_TUTORIALS_POLL_INTERVAL='hourly' is not a number"],
        id="poll-interval",
    ),
    pytest.param(
        {"GPUHUB_REPLICAS_PER_GPU": "1.5"},
        ["GPUHUB_REPLICAS_PER_GPU='1.5' is not a whole number. Set it to a whole number from 1 to 64"],
        id="replicas-fraction",
    ),
    pytest.param(
        {"GPUHUB_QUEUE_MAX_WAIT": "-5"}, ["GPUHUB_QUEUE_MAX_WAIT='-5' is out of range"], id="queue-wait"
    ),
    pytest.param(
        {"GPUHUB_FAIR_SHARE_HALF_LIFE": "-1"}, ["GPUHUB_FAIR_SHARE_HALF_LIFE='-1' is out of range"],
        id="fair-share-half-life",
    ),
    pytest.param(
        {"GPUHUB_PROMETHEUS_TOKEN_FILE": "/nonexistent/prometheus-token"},
        [
            "GPUHUB_PROMETHEUS_TOKEN_FILE: cannot read the token file /nonexistent/prometheus-token",
            "Put a random token in it",
        ],
        id="prometheus-token-file-missing",
    ),
    pytest.param(
        {"GPUHUB_PROFILES": json.dumps([{**CPU_PROFILE, "cpu_limit": "two"}])},
        ["gpu_profiles[0] (GPUHUB_PROFILES) cpu_limit: 'two' is not a number > 0", "Fix the profile"],
        id="profile-cpu-word",
    ),
    pytest.param(
        {"GPUHUB_PROFILES": json.dumps([{**CPU_PROFILE, "mem_limit": "4 gigs"}])},
        [
            "gpu_profiles[0] (GPUHUB_PROFILES) mem_limit: '4 gigs' is not a memory size such as '4G'",
            "a number followed by K, M, G or T (1024-based)",
        ],
        id="profile-mem-word",
    ),
    pytest.param(
        {"GPUHUB_PROFILES": json.dumps([{**CPU_PROFILE, "mem_limit": "1M"}])},
        ["mem_limit: '1M' is out of range: allowed from 6M to 64T"],
        id="profile-mem-below-docker-minimum",
    ),
]


@pytest.mark.parametrize("env, expected", BAD_SETTINGS)
def test_bad_setting_stops_the_hub_at_start(tmp_path, env: dict[str, str], expected: list[str]) -> None:
    code, log = HubProcess(tmp_path / "hub").start_refused(env)
    assert code == 2, log
    assert "gpuhub: configuration error: " in log, log
    for text in expected:
        assert text in log, log
    assert "Traceback" not in log, log
    # it stopped while reading its config: no proxy, no service, nobody served
    assert "Starting managed service" not in log and "Proxy API at" not in log, log


def test_profile_memory_in_gibibytes_reaches_the_container(docker_client, hub_factory) -> None:
    """mem_limit "4Gi": accepted at start, and the spawn gets exactly 4 GiB (one byte-size grammar)."""
    profiles = [{**CPU_PROFILE, "mem_limit": "4Gi", "cpu_limit": "0.5"}]
    hub = hub_factory(start=False)
    hub.start(env={"GPUHUB_PROFILES": json.dumps(profiles)})
    hub.create_users(["gib"])
    r = hub.spawn("gib", {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("gib")
    host_config = container_of(docker_client, hub, "gib").attrs["HostConfig"]
    assert host_config["Memory"] == 4 * 1024**3
    assert host_config["CpuQuota"] == 50_000


@pytest.mark.parametrize("where", ["group", "override"], ids=["group-properties", "user-override"])
def test_absurd_quota_at_spawn_is_a_clear_refusal(docker_client, hub_factory, where: str) -> None:
    """Out of range in group properties or an override: refused, logged for the admin; no traceback."""
    hub = hub_factory()
    hub.create_users(["abe"])
    if where == "group":
        assert hub.api("POST", "/groups/huge").status_code in (201, 409)
        assert hub.api("POST", "/groups/huge/users", json={"users": ["abe"]}).ok
        r = hub.api("PUT", "/groups/huge/properties", json={"max_gpu_units": "1000000"})
        assert r.ok, r.text
    else:
        from gpuhub_spawner.storage.ledger import UsageLedger

        ledger = UsageLedger(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
        try:
            ledger.set_override("abe", {"gpu_hours_per_period": 1e9}, by="test")
        finally:
            ledger.dispose()
    r = hub.spawn("abe", {"profile": "cpu"})
    assert r.status_code >= 400, r.text
    assert (
        r.json()["message"]
        == "Your quota settings cannot be read, so no server can start. Tell the hub's admin."
    )
    assert not hub.containers(docker_client)
    field, value = (
        ("max_gpu_units", "'1000000'") if where == "group" else ("gpu_hours_per_period", "1000000000.0")
    )
    log = hub.log_path.read_text(errors="replace")
    assert f"bad quota for abe: {field}: {value} is out of range: allowed from 0 to" in log, log[-4000:]
    assert "Traceback" not in log, log[-6000:]


def test_plaintext_docker_host_is_refused_before_anything_connects(tmp_path) -> None:
    """DOCKER_HOST=tcp://… without mutual TLS: the hub stops at start, and not one connection
    reaches that address first (the user network and bridge lookups come after the check)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        code, log = HubProcess(tmp_path / "hub").start_refused(
            {"DOCKER_HOST": f"tcp://127.0.0.1:{listener.getsockname()[1]}"}
        )
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert code == 2, log
    assert "gpuhub: configuration error: " in log and "DOCKER_TLS_VERIFY" in log, log
    assert "Traceback" not in log, log
    assert not accepted, "the hub spoke plaintext to the Docker address before refusing it"


# ---- gpuhub.yaml: the hub refuses a bad file in the words of `gpuhub config check` ------------

GPU = {"uuid": "GPU-00000000-0000-4000-8000-000000000000", "name": "NVIDIA A100 40GB", "memory_mb": 40960}
BAD_FILES = [
    pytest.param({"hub": {"prot": 8081}}, "hub.prot: unknown key", id="unknown-key"),
    pytest.param(
        {"profiles": [{"slug": "cpu", "pool": None, "mem_limit": "4Gi"}]},
        "profiles[0].mem_limit: '4Gi' is not a memory size such as '4G'; write 4G",
        id="bad-size",
    ),
    pytest.param(
        {"inventory": {"discovery": "static", "gpus": [GPU]}, "profiles": [{"slug": "h", "pool": "h100"}]},
        "profiles[0].pool: 'h100' is not a pool of inventory.gpus (pools: gpu)",
        id="unknown-pool",
    ),
    pytest.param(
        {"profiles": [{"slug": "x", "pool": None, "image": "evil/miner"}]},
        "profiles[0].image: 'evil/miner' is not an allowed image: add it to images.allowed",
        id="image-not-allowed",
    ),
]


@pytest.mark.parametrize("raw, line", BAD_FILES)
def test_a_bad_file_stops_the_hub_in_the_words_of_config_check(tmp_path, raw, line) -> None:
    import subprocess
    import sys

    import yaml

    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    check = subprocess.run(
        [sys.executable, "-m", "gpuhub_spawner.cli", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 2 and check.stdout == "", check
    assert check.stderr.startswith("gpuhub: configuration error: " + line), check.stderr
    code, log = HubProcess(tmp_path / "hub").start_refused({"GPUHUB_CONFIG": str(path)})
    assert code == 2, log
    refused = [row for row in log.splitlines() if row.startswith("gpuhub: configuration error: ")]
    assert refused == check.stderr.splitlines(), log
    assert "Traceback" not in log, log
    assert "Starting managed service" not in log and "Proxy API at" not in log, log


def test_a_good_file_drives_the_hub_and_a_profile_gets_its_memory_and_environment(
    docker_client, hub_factory, tmp_path
) -> None:
    """From gpuhub.yaml alone: the profile's limits and its own environment reach the container."""
    import yaml
    from harness import IMAGE

    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump({
        "images": {"default": IMAGE, "allowed": [IMAGE]},
        "profiles": [{
            "slug": "cpu", "display_name": "CPU only", "pool": None, "mem_limit": "4G", "cpu_limit": 0.5,
            "image": IMAGE, "environment": {"GPUHUB_TEST_PROFILE": "from-gpuhub-yaml"},
        }],
    }))
    hub = hub_factory(start=False)
    hub.start(env={"GPUHUB_CONFIG": str(path)})
    hub.create_users(["yam"])
    r = hub.spawn("yam", {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("yam")
    container = container_of(docker_client, hub, "yam")
    assert container.attrs["HostConfig"]["Memory"] == 4 * 1024**3
    assert container.attrs["HostConfig"]["CpuQuota"] == 50_000
    assert "GPUHUB_TEST_PROFILE=from-gpuhub-yaml" in container.attrs["Config"]["Env"]
    log = hub.log_path.read_text(errors="replace")
    # the harness's own GPUHUB_* variables still work, each with its notice
    assert "gpuhub: GPUHUB_HUB_PORT is deprecated (read for one more release): set hub.port" in log
