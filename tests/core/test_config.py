"""gpuhub.yaml: one model of the whole file (gpuhub_spawner/core/config.py), ``gpuhub config
check``/``example``, and today's GPUHUB_* variables laid over the file with a notice each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuhub_spawner import cli
from gpuhub_spawner.core import config, hubconfig
from gpuhub_spawner.core.config import ConfigFileError, GPUHubConfig, load_config
from gpuhub_spawner.core.config_example import EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
GPU = {"uuid": "GPU-00000000-0000-4000-8000-000000000000", "name": "NVIDIA A100 40GB", "memory_mb": 40960}
STATIC = {"discovery": "static", "gpus": [GPU]}

# (the file, the one line `gpuhub config check` and the hub print after "configuration error: ")
BAD_FILES = [
    pytest.param(
        {"hub": {"prot": 8081}},
        "hub.prot: unknown key: check its spelling, or remove it (known keys here: bind_url, ip, port,",
        id="unknown-key",
    ),
    pytest.param(
        {"profiles": [{"slug": "cpu"}, {"slug": "big", "mem_limit": "4Gi"}]},
        "profiles[1].mem_limit: '4Gi' is not a memory size such as '4G'; write 4G (sizes are a number of "
        "bytes, or a number followed by K, M, G or T (1024-based) such as '512M' or '1.5T')",
        id="bad-size",
    ),
    pytest.param(
        {"inventory": STATIC, "profiles": [{"slug": "h", "pool": "h100"}]},
        "profiles[0].pool: 'h100' is not a pool of inventory.gpus (pools: gpu): name one of them, "
        "or write pool: null for CPU only",
        id="unknown-pool",
    ),
    pytest.param(
        {"images": {"allowed": ["gpuhub/singleuser:latest"]}, "profiles": [{"slug": "x", "image": "evil/miner"}]},
        "profiles[0].image: 'evil/miner' is not an allowed image: add it to images.allowed, or use one of "
        "'gpuhub/singleuser:latest'",
        id="image-not-allowed",
    ),
    pytest.param(
        {"profiles": [{"slug": "cpu", "mem_limit": "1M"}]},
        "profiles[0].mem_limit: '1M' is out of range: allowed from 6M to 64T",
        id="size-too-small",
    ),
    pytest.param(
        {"quota_defaults": {"max_gpu_units": "lots"}},
        "quota_defaults.max_gpu_units: 'lots' is not a whole number ≥ 0 (or 'unlimited'): fix it, or leave it out",
        id="quota-word",
    ),
    pytest.param(
        {"quota_defaults": {"gpus": 1}},
        "quota_defaults.gpus: unknown key: check its spelling, or remove it (quota fields: allowed_profiles,",
        id="quota-unknown-key",
    ),
    pytest.param(
        {"hub": {"port": "abc"}}, "hub.port: 'abc' is not a port: write a port number from 1 to 65535", id="port"
    ),
    pytest.param(
        {"inventory": {"discovery": "magic"}},
        "inventory.discovery: 'magic': input should be 'auto', 'nvml' or 'static'",
        id="discovery",
    ),
    pytest.param(
        {"sign_in": {"authenticator": "github"}},
        "sign_in.github.client_id: empty, but authenticator is 'github': set the OAuth app's client id",
        id="github-without-client",
    ),
    pytest.param(
        {"sign_in": {"admin_users": ["prof", "../x"]}},
        "sign_in.admin_users[1]: '../x' is not a username: write plain usernames, e.g. [prof, ta1]",
        id="admin-name",
    ),
    pytest.param(
        {"tutorials": {"max_total_size": "10GB"}},
        "tutorials.max_total_size: '10GB' is not a memory size such as '4G'; write 10G",
        id="tutorial-cap-size",
    ),
    pytest.param(
        {"inventory": {"gpus": [{"uuid": "0"}]}},
        "inventory.gpus[0]: '0' is not a GPU UUID",
        id="bad-gpu",
    ),
    pytest.param({"profiles": [{"display_name": "x"}]}, "profiles[0].slug: missing: add it", id="missing-slug"),
    pytest.param(
        {"tutorials": {"source": "/srv/../etc"}},
        "tutorials.source: host path '/srv/../etc' must not contain '..'",
        id="tutorials-source",
    ),
]


def write(tmp_path: Path, raw: Any, name: str = "gpuhub.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- gpuhub config check / example ---------------------------------------------------------


@pytest.mark.parametrize("raw, line", BAD_FILES)
def test_config_check_names_the_key_path_the_value_and_the_fix(tmp_path, capsys, raw, line) -> None:
    code, out, err = run_cli("config", "check", str(write(tmp_path, raw)), capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("gpuhub: configuration error: " + line), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_config_example_is_the_committed_example_and_passes_check(tmp_path, capsys) -> None:
    code, out, _ = run_cli("config", "example", capsys=capsys)
    assert code == 0 and out == EXAMPLE
    assert (ROOT / "deploy" / "gpuhub.example.yaml").read_text() == EXAMPLE
    path = tmp_path / "example.yaml"
    path.write_text(out)
    assert run_cli("config", "check", str(path), capsys=capsys) == (0, "ok\n", "")


def test_the_example_sets_every_key_of_the_model() -> None:
    """A full example: each section's keys all appear (a new key must be documented there)."""
    raw = yaml.safe_load(EXAMPLE)

    def keys(model: type, data: dict[str, Any], where: str) -> None:
        for name, field in model.model_fields.items():
            assert name in data, f"{where}{name} is missing from the example"
            nested = field.annotation
            if isinstance(nested, type) and issubclass(nested, config.Section):
                keys(nested, data[name], f"{where}{name}.")

    keys(GPUHubConfig, raw, "")


def test_config_check_on_a_file_that_is_not_yaml_or_absent(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hub: [unclosed\n")
    code, _, err = run_cli("config", "check", str(bad), capsys=capsys)
    assert code == 2 and f"{bad}: not valid YAML" in err and "fix the YAML" in err
    code, _, err = run_cli("config", "check", str(tmp_path / "none.yaml"), capsys=capsys)
    assert code == 2 and "cannot read it (No such file or directory)" in err


def test_every_error_is_reported_one_line_each(tmp_path) -> None:
    raw = {"hub": {"port": 0, "colour": "blue"}, "profiles": [{"slug": "a", "mem_limit": "4gb"}]}
    with pytest.raises(ConfigFileError) as info:
        config.check_file(write(tmp_path, raw))
    assert [line.split(":")[0] for line in info.value.lines] == ["hub.port", "hub.colour", "profiles[0].mem_limit"]


def test_a_swarm_or_discovered_inventory_leaves_pools_to_run_time() -> None:
    """Pools known only from NVML or the swarm's nodes are checked when the hub builds them."""
    config.validate({"profiles": [{"slug": "g", "pool": "mig-1g.10gb"}]})
    config.validate({"hub": {"spawner": "swarm"}, "inventory": STATIC, "profiles": [{"slug": "g", "pool": "x"}]})


def test_profile_entries_for_the_spawner_keep_its_keys_only() -> None:
    cfg = config.validate(
        {"inventory": STATIC, "profiles": [{"slug": "g", "pool": "gpu", "mem_limit": "8G", "image": "", "environment": {"A": "1"}}]}
    )
    assert [p.spawner_entry() for p in cfg.profiles] == [{"slug": "g", "pool": "gpu", "mem_limit": "8G"}]


# ---- load_config: the file, then the deprecated variables ------------------------------------


def test_no_file_no_variables_is_the_embedded_default() -> None:
    notices: list[str] = []
    cfg = load_config(environ={}, notify=notices.append)
    assert cfg == GPUHubConfig() and notices == []
    assert (cfg.hub.port, cfg.hub.proxy_api_port, cfg.services.admin_port) == (8081, 8001, 8766)
    assert (cfg.culler.enabled, cfg.culler.port, cfg.tutorials.port, cfg.metrics.exporter_port) == (True, 8767, 8765, None)
    assert cfg.images.default == "gpuhub/singleuser:latest" and cfg.inventory.discovery == "auto"
    assert cfg.tutorials.max_total_mb == 10240 and cfg.tutorials.max_files == 100000


def test_the_file_is_named_by_gpuhub_config(tmp_path) -> None:
    path = write(tmp_path, {"hub": {"port": 9001}, "culler": {"enabled": False}})
    cfg = load_config(environ={"GPUHUB_CONFIG": str(path)}, notify=pytest.fail)
    assert cfg.hub.port == 9001 and cfg.culler.enabled is False


def test_a_variable_wins_over_the_file_with_a_notice_naming_the_key(tmp_path) -> None:
    path = write(tmp_path, {"hub": {"port": 9001, "ip": "10.0.0.1"}})
    notices: list[str] = []
    environ = {"GPUHUB_CONFIG": str(path), "GPUHUB_HUB_PORT": "9002", "GPUHUB_HUB_IP": " ", "GITHUB_CLIENT_ID": "cid"}
    cfg = load_config(environ=environ, notify=notices.append)
    assert cfg.hub.port == 9002 and cfg.hub.ip == "10.0.0.1"  # a blank variable counts as unset
    assert cfg.sign_in.authenticator == "github" and cfg.sign_in.github.client_id == "cid"
    assert notices == [
        "gpuhub: GPUHUB_HUB_PORT is deprecated (read for one more release): set hub.port in gpuhub.yaml instead"
    ]


def test_a_bad_variable_is_refused_in_todays_words() -> None:
    with pytest.raises(hubconfig.ConfigError, match=r"^GPUHUB_HUB_PORT='abc' is not a port"):
        load_config(environ={"GPUHUB_HUB_PORT": "abc"})


def test_old_size_forms_in_variables_become_the_one_grammar() -> None:
    environ = {
        "GPUHUB_PROFILES": '[{"slug": "cpu", "pool": null, "mem_limit": "4Gi"}]',
        "GPUHUB_QUOTA_DEFAULTS": '{"mem_limit": "512m"}',
        "GPUHUB_TUTORIALS_MAX_TOTAL_MB": "2048",
    }
    cfg = load_config(environ=environ, notify=lambda line: None)
    assert cfg.profiles[0].mem_limit == "4G" and cfg.quota_defaults["mem_limit"] == "512M"
    assert cfg.tutorials.max_total_mb == 2048


ALL_VARIABLES = {
    "GPUHUB_DATA_DIR": ("/srv/gpuhub", "hub.data_dir", "/srv/gpuhub"),
    "GPUHUB_BIND_URL": ("https://hub.example.org", "hub.bind_url", "https://hub.example.org"),
    "GPUHUB_HUB_IP": ("10.0.0.2", "hub.ip", "10.0.0.2"),
    "GPUHUB_HUB_PORT": ("9081", "hub.port", 9081),
    "GPUHUB_PROXY_API_PORT": ("9001", "hub.proxy_api_port", 9001),
    "GPUHUB_DB_URL": ("sqlite:///x.db", "hub.db_url", "sqlite:///x.db"),
    "GPUHUB_USAGE_DB_URL": ("sqlite:///u.db", "hub.usage_db_url", "sqlite:///u.db"),
    "GPUHUB_SPAWNER": ("swarm", "hub.spawner", "swarm"),
    "GPUHUB_DOCKER_HOST": ("tcp://m:2376", "hub.docker_host", "tcp://m:2376"),
    "GPUHUB_USER_NETWORK": ("net", "hub.user_network", "net"),
    "GPUHUB_USER_FIREWALL": ("off", "hub.user_firewall", False),
    "GPUHUB_EXTRA_CONFIG": ("/etc/x.py", "hub.extra_config", "/etc/x.py"),
    "GPUHUB_IMAGE": ("img:1", "images.default", "img:1"),
    "GPUHUB_GPU_DISCOVERY": ("static", "inventory.discovery", "static"),
    "GPUHUB_GPU_INVENTORY": (json.dumps([GPU]), "inventory.gpus", [GPU]),
    "GPUHUB_REPLICAS_PER_GPU": ("4", "inventory.replicas_per_gpu", 4),
    "GPUHUB_QUEUE_MAX_WAIT": ("60", "inventory.queue_max_wait", 60),
    "GPUHUB_FAIR_SHARE_HALF_LIFE": ("72", "inventory.fair_share_half_life", 72),
    "GPUHUB_PROFILES": ('[{"slug": "c", "pool": null}]', "profiles", None),
    "GPUHUB_QUOTA_DEFAULTS": ('{"max_gpu_units": 2}', "quota_defaults", {"max_gpu_units": 2}),
    "GPUHUB_ADMIN_USERS": ("prof, ta1", "sign_in.admin_users", ["prof", "ta1"]),
    "GPUHUB_OAUTH_CALLBACK_URL": ("https://h/cb", "sign_in.github.callback_url", "https://h/cb"),
    "GPUHUB_GITHUB_ORGS": ("acme,acme:gpu", "sign_in.github.orgs", ["acme", "acme:gpu"]),
    "GPUHUB_ALLOWED_USERS": ("kim", "sign_in.github.allowed_users", ["kim"]),
    "GPUHUB_GITHUB_ADMIN_TEAMS": ("acme:staff=42", "sign_in.github.admin_teams", ["acme:staff=42"]),
    "GPUHUB_TUTORIALS": ("vol", "tutorials.source", "vol"),
    "GPUHUB_TUTORIALS_REPO": ("/srv/t.git", "tutorials.repo", "/srv/t.git"),
    "GPUHUB_TUTORIALS_BRANCH": ("live", "tutorials.branch", "live"),
    "GPUHUB_TUTORIALS_STORE": ("/srv/store", "tutorials.store", "/srv/store"),
    "GPUHUB_TUTORIALS_POLL_INTERVAL": ("30", "tutorials.poll_interval", 30),
    "GPUHUB_TUTORIALS_MAX_TOTAL_MB": ("100", "tutorials.max_total_size", 100 * 1024**2),
    "GPUHUB_TUTORIALS_MAX_FILES": ("50", "tutorials.max_files", 50),
    "GPUHUB_TUTORIAL_SYNC_PORT": ("9765", "tutorials.port", 9765),
    "GPUHUB_ADMIN_SERVICE_PORT": ("9766", "services.admin_port", 9766),
    "GPUHUB_EXPORTER_PORT": ("9768", "metrics.exporter_port", 9768),
    "GPUHUB_PROMETHEUS_TOKEN_FILE": ("/run/p", "metrics.prometheus_token_file", "/run/p"),
    "GPUHUB_PROMETHEUS_URL": ("http://prometheus:9090", "metrics.prometheus_url", "http://prometheus:9090"),
    "GPUHUB_CULLER": ("off", "culler.enabled", False),
    "GPUHUB_CULLER_PORT": ("9767", "culler.port", 9767),
    "GPUHUB_CULLER_CONFIG": ("/etc/c.json", "culler.config_file", "/etc/c.json"),
    "GPUHUB_GPU_AGENT_URLS": ("http://a:9400,http://b:9400", "culler.gpu_agent_urls", ["http://a:9400", "http://b:9400"]),
    "GPUHUB_GPU_AGENT_TOKEN_FILE": ("/run/a", "culler.gpu_agent_token_file", "/run/a"),
}


def test_every_variable_of_today_maps_onto_its_key() -> None:
    table = {name: key for name, key, _ in hubconfig.ENVIRONMENT if name not in hubconfig.UPSTREAM}
    assert table == {name: key for name, (_, key, _) in ALL_VARIABLES.items()}
    notices: list[str] = []
    cfg = load_config(environ={name: raw for name, (raw, _, _) in ALL_VARIABLES.items()}, notify=notices.append)
    assert len(notices) == len(ALL_VARIABLES)
    for name, (_raw, key, expected) in ALL_VARIABLES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if expected is not None:
            assert value == expected, name
        assert f"{name} is deprecated" in "\n".join(notices) and f"set {key} in gpuhub.yaml" in "\n".join(notices)


def test_a_problem_a_variable_made_names_the_variable() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config(environ={"GPUHUB_GPU_DISCOVERY": "magic"}, notify=lambda line: None)
    assert info.value.lines == [
        "inventory.discovery: 'magic': input should be 'auto', 'nvml' or 'static' (set by GPUHUB_GPU_DISCOVERY)"
    ]


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path, capsys) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("hub:\n  port: 8081\nprofiles: []\nhub:\n  ip: 10.0.0.1\n")
    code, _, err = run_cli("config", "check", str(path), capsys=capsys)
    assert code == 2
    assert err == (
        f"gpuhub: configuration error: {path}: not valid YAML (key 'hub' is given twice in one mapping "
        "(keep one) at line 4 column 1): fix the YAML\n"
    )


@pytest.mark.parametrize(
    "limits, line",
    [
        ({"default_mem_limit": "8Gi"}, "limits.default_mem_limit: '8Gi' is not a memory size such as '4G'; write 8G"),
        ({"default_mem_limit": None}, "limits.default_mem_limit: there is no unlimited memory: give a size such as '8G'"),
        ({"pids_limit": 10}, "limits.pids_limit: 10: input should be greater than or equal to 64"),
    ],
)
def test_default_limits_are_checked_like_a_profiles(limits, line) -> None:
    with pytest.raises(ConfigFileError) as info:
        config.validate({"limits": limits})
    assert len(info.value.lines) == 1 and info.value.lines[0].startswith(line), info.value.lines


def test_default_limits_are_the_spawners_defaults() -> None:
    from gpuhub_spawner.hub.settings import GPUSpawnerSettings

    limits = GPUHubConfig().limits
    traits = GPUSpawnerSettings.class_traits()
    assert limits.default_mem_limit == traits["default_mem_limit"].default_value
    assert limits.default_cpu_limit == traits["default_cpu_limit"].default_value
    assert limits.pids_limit == traits["pids_limit"].default_value
