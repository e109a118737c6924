"""Driving the culler of a test hub (``HubProcess`` with ``hub.culler`` set): a pass on demand,
one server's decision, waiting for one, and a user's server made ready."""

from __future__ import annotations

import time

import requests


def run_pass(hub) -> dict[tuple[str, str], dict]:
    """Ask the culler for one pass now; its records by (user, server)."""
    r = requests.post(hub.culler + "api/pass", headers={"Authorization": f"token {hub.token}"}, timeout=60)
    assert r.status_code == 200, r.text
    return {(s["user"], s["server"]): s for s in r.json()["servers"]}


def decision(hub, user: str) -> tuple[str, str]:
    entry = run_pass(hub)[(user, "")]
    return entry["action"], entry["reason"]


def pass_until(hub, user: str, action: str, timeout: float = 40) -> tuple[str, str]:
    """Run passes until ``user``'s default server gets ``action``; fails with every decision seen."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        got = decision(hub, user)
        seen.append(got)
        if got[0] == action:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{user}: no {action} within {timeout}s; decisions: {seen}")


def spawn(hub, name: str, profile: str = "short") -> None:
    r = hub.spawn(name, {"profile": profile})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(name)
