"""`gpuhub node setup --agent-token-file FILE`: the node agent comes up with the node, in the
host's PID and cgroup namespaces (the container itself is tested on the real engine in
test_agent_install.py; here, that setup asks for it, and checks its token before changing anything).
"""

from __future__ import annotations

import secrets

from nodesetup import setup_argv as _setup

from gpuhub_spawner.cli import main


def test_dry_run_shows_the_agent_in_the_hosts_namespaces_and_changes_nothing(tmp_path, capsys):
    token = tmp_path / "agent-token"
    token.write_text(secrets.token_hex(32) + "\n")
    token.chmod(0o600)
    assert main(_setup(tmp_path, "--agent-token-file", str(token), "--agent-image", "gpuhub/node-agent:x", "--dry-run")) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[setup] would start the node agent: "))
    assert "docker run" in line and "--pid host" in line and "--cgroupns host" in line
    assert "gpuhub/node-agent:x" in line and f"{token}:/run/secrets/gpuhub-agent-token:ro" in line
    assert not (tmp_path / "daemon.json").exists()


def test_a_missing_token_stops_setup_before_it_changes_anything(tmp_path, capsys):
    code = main(_setup(tmp_path, "--agent-token-file", str(tmp_path / "no-such-token")))
    err = capsys.readouterr()
    assert code != 0
    assert "openssl rand -hex 32" in err.out + err.err and "Nothing was changed" in err.out + err.err
    assert not (tmp_path / "daemon.json").exists() and not (tmp_path / "config.toml").exists()


def test_without_the_option_setup_starts_no_agent(tmp_path, capsys):
    assert main(_setup(tmp_path, "--dry-run")) == 0
    assert "node agent" not in capsys.readouterr().out
