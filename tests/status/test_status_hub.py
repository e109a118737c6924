"""``gpuhub status`` against a real hub: one GPU held, one user in line for it.

The command runs as the operator runs it (the ``gpuhub`` console script), with a service token
whose role holds only the scopes ``gpuhub status --help`` lists.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from harness import fake_gpus

STATUS_SCOPES = ["list:users", "read:users", "read:servers", "list:services", "read:services", "read:metrics"]


def _status(hub_url: str, token_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpuhub_spawner.cli", "status", "--hub-url", hub_url, "--token-file",
         str(token_file), "--no-docker", *extra],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.docker
@pytest.mark.hub
def test_status_shows_services_pools_and_who_waits_in_line(docker_client, hub_factory, tmp_path):
    token = secrets.token_hex(16)
    extra = (
        f'c.JupyterHub.services.append({{"name": "ops-status", "api_token": {token!r}}})\n'
        f'c.JupyterHub.load_roles.append({{"name": "ops-status", "scopes": {STATUS_SCOPES!r}, '
        '"services": ["ops-status"]})\n'
    )
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "stq"), "gpu_queue_max_wait": 300}, extra=extra)
    hub.create_users(["ann", "bob"])
    assert hub.spawn("ann", {"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready("ann")
    assert hub.spawn("bob", {"profile": "gpu"}, timeout=30).status_code == 202  # in line
    token_file = tmp_path / "status-token"
    token_file.write_text(token + "\n")

    done = _status(hub.url, token_file, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["hub"]["answering"] and report["hub"]["version"]
    assert {"name": "gpuhub-admin", "answering": True, "detail": ""} in report["services"], report
    assert [(w["user"], w["state"], w["position"], w["of"]) for w in report["queue"]] == [("bob", "in line", 1, 1)]
    assert report["queue"][0]["wants"], report["queue"]
    assert report["queue_lengths"] == {"gpu": 1}
    assert report["problems"] == []

    text = _status(hub.url, token_file)
    assert text.returncode == 0, text.stderr
    assert f"  bob: #1 of 1 for {report['queue'][0]['wants']}" in text.stdout.splitlines(), text.stdout

    # a token the hub does not know: told plainly, exit 1, no traceback
    token_file.write_text(secrets.token_hex(16))
    refused = _status(hub.url, token_file)
    assert refused.returncode == 1
    assert "the hub refused the token (403)" in refused.stdout, refused.stdout
    assert "Traceback" not in refused.stdout + refused.stderr

    # an attendee's own token: what it lacks is said, not shown as an empty hub
    r = hub.api("POST", "/users/bob/tokens", json={"note": "attendee"})
    r.raise_for_status()
    token_file.write_text(r.json()["token"])
    attendee = _status(hub.url, token_file, "--json")
    assert attendee.returncode == 1
    problems = json.loads(attendee.stdout)["problems"]
    assert any(p.startswith("the token lacks list:users") for p in problems), problems
    hub.api("DELETE", "/users/bob/server", timeout=60)
