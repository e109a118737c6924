"""Secrets of swarm operation (issue 11): no plaintext Docker API, no join token on argv.

The real mutual-TLS manager, the hub over it, and `gpuhub node setup` joining with a token file
are on the swarm rig (tests/swarm/test_swarm_security.py, test_swarm_spawner.py); here: the
rules themselves and the command line, without an engine.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuhub_spawner.cli import main
from gpuhub_spawner.core.dockerhost import DockerHostError, PinnedTLSConfig, client_kwargs, require_mutual_tls
from gpuhub_spawner.node.nodecli import SetupError, read_join_token

REPO = Path(__file__).resolve().parents[2]
TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
CERTS = {"/c/ca.pem", "/c/cert.pem", "/c/key.pem"}


@pytest.mark.parametrize(
    "url, env, refused",
    [
        pytest.param("", {}, None, id="local-socket"),
        pytest.param("unix:///var/run/docker.sock", {}, None, id="unix"),
        pytest.param("ssh://admin@manager", {}, None, id="ssh"),
        pytest.param("tcp://manager:2375", {}, "DOCKER_TLS_VERIFY is not set", id="tcp-plain"),
        pytest.param("http://manager:2375", {}, "DOCKER_TLS_VERIFY is not set", id="http-plain"),
        pytest.param("TCP://manager:2375", {}, "DOCKER_TLS_VERIFY is not set", id="tcp-upper-case"),
        pytest.param("tcp://manager:2376", {"DOCKER_CERT_PATH": "/c"}, "DOCKER_TLS_VERIFY is not set",
                     id="certs-but-no-verification"),
        pytest.param("tcp://manager:2376", {"DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": "/c"},
                     "DOCKER_TLS_VERIFY is not set", id="verify-empty"),
        pytest.param("tcp://manager:2376", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/nowhere"},
                     "lacks ca.pem, cert.pem, key.pem", id="no-certificates"),
        pytest.param("tcp://manager:2376", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/c"}, None, id="mutual-tls"),
    ],
)
def test_only_mutual_tls_over_tcp(url, env, refused):
    if refused:
        with pytest.raises(DockerHostError, match=refused) as e:
            require_mutual_tls(url, env, "GPUHUB_DOCKER_HOST", isfile=CERTS.__contains__)
        assert str(e.value).startswith("GPUHUB_DOCKER_HOST ") and "make-tls.sh" in str(e.value)
        assert "manager:237" not in str(e.value)  # the setting is named, its value is not repeated
        return
    tls = require_mutual_tls(url, env, "GPUHUB_DOCKER_HOST", isfile=CERTS.__contains__)
    if env:
        assert tls.ca_cert == "/c/ca.pem" and tls.client_cert == ("/c/cert.pem", "/c/key.pem")
    else:
        assert tls is None


def test_the_tls_setting_ignores_a_ca_bundle_from_the_environment(tmp_path, monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE replace a session's CA: the swarm's CA must win."""
    import docker

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    tls = PinnedTLSConfig(ca_cert=__file__, client_cert=(__file__, __file__), verify=True)
    api = docker.APIClient(base_url="tcp://192.0.2.1:2376", tls=tls, version="1.41")
    settings = api.merge_environment_settings(api.base_url, {}, None, None, None)
    assert settings["verify"] == __file__ and api.base_url.startswith("https://")


def test_operator_commands_refuse_a_plaintext_manager(monkeypatch, capsys):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    assert main(["node", "cordon", "w-1", "--docker-host", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--docker-host is a Docker API over TCP" in err and "Traceback" not in err
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    assert main(["node", "drain", "w-1"]) == 2
    assert "DOCKER_HOST is a Docker API over TCP" in capsys.readouterr().err
    with pytest.raises(DockerHostError):
        client_kwargs("", {"DOCKER_HOST": "tcp://x:2375"}, "--docker-host")


# ---- the join token -------------------------------------------------------------------------


def _setup_args(tmp_path: Path) -> list[str]:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps([{"uuid": "GPU-aa000000-0000-4000-8000-000000000001", "name": "L4"}]))
    return ["node", "setup", "--static", str(gpus), "--daemon-json", str(tmp_path / "daemon.json"),
            "--runtime-config", str(tmp_path / "config.toml"), "--restart-command", "true",
            "--manager", "127.0.0.1:2377"]


def test_a_join_token_on_the_command_line_is_refused_and_not_echoed(tmp_path, capsys):
    assert main([*_setup_args(tmp_path), "--join-token", TOKEN]) == 2
    captured = capsys.readouterr()
    assert "--join-token-file" in captured.err and "Nothing was changed" in captured.err
    assert TOKEN not in captured.err + captured.out
    assert not (tmp_path / "daemon.json").exists()


@pytest.mark.parametrize(
    "content, says",
    [
        pytest.param(None, "cannot read --join-token-file", id="missing"),
        pytest.param("", "does not hold a swarm join token", id="empty"),
        pytest.param("hunter2\n", "does not hold a swarm join token", id="not-a-token"),
        pytest.param(TOKEN + "\n" + TOKEN + "\n", "does not hold a swarm join token", id="two-lines"),
    ],
)
def test_a_bad_token_file_stops_setup_before_any_change(tmp_path, capsys, content, says):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    assert main([*_setup_args(tmp_path), "--join-token-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Nothing was changed" in err and "hunter2" not in err, err
    assert not (tmp_path / "daemon.json").exists()


def test_the_join_token_is_read_from_a_file_or_standard_input(tmp_path):
    (tmp_path / "t").write_text(f"  {TOKEN}\n")
    assert read_join_token(str(tmp_path / "t")) == TOKEN
    assert read_join_token("-", stdin=io.StringIO(TOKEN + "\n")) == TOKEN
    with pytest.raises(SetupError, match="standard input does not hold"):
        read_join_token("-", stdin=io.StringIO("nope"))


def test_setup_reads_the_token_from_stdin_and_keeps_it_out_of_argv_and_output(tmp_path):
    """The real command with the token piped in (a dry run: the real join is on the swarm rig)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "gpuhub_spawner.cli", *_setup_args(tmp_path), "--join-token-file", "-", "--dry-run"]
    done = subprocess.run(cmd, input=TOKEN + "\n", capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "node-generic-resources" in done.stdout, done.stdout + done.stderr
    assert TOKEN not in " ".join(cmd) and TOKEN not in done.stdout + done.stderr
    bad = subprocess.run(cmd, input="not a token\n", capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "standard input does not hold a swarm join token" in bad.stderr, bad.stderr
