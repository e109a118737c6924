"""Ctrl-C stops the real hub and its services cleanly and promptly (issue 11, item 13).

The hub runs ``jupyterhub_config.py`` with all four hub services (admin, culler, exporter,
tutorial sync). SIGINT goes to the hub, as Ctrl-C in ``deploy/gpuhub-up``'s terminal does; the
hub then stops each service with SIGINT. In the second case the hub is started with SIGINT
ignored, as a shell script's background job (``deploy/gpuhub-up &``) or ``nohup`` starts it:
its services inherit that, and used to sit out JupyterHub's 30 s SIGINT and 30 s SIGTERM waits
one after another, while the hub's periodic health check logged a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import free_port, processes

pytestmark = [pytest.mark.hub]

# the log line each service writes once it serves (so SIGINT finds them all running)
SERVICES_UP = {
    "hub_services.admin": "GPU Hub admin service listening",
    "hub_services.culler": "Culler listening",
    "hub_services.exporter": "gpuhub hub exporter on",
    "hub_services.tutorial_sync": "Tutorial sync for branch",
}
STOP_BOUND_S = 10  # the figure for the whole stop
HANG_GUARD_S = 150  # only so that a hung hub fails the test instead of blocking the run


def _service_pids(hub_pid: int) -> dict[str, int]:
    found = {}
    for pid, (stat, cmdline) in processes("stat", "cmdline"):
        if int(stat.rsplit(b")", 1)[1].split()[1]) == hub_pid:
            for module in SERVICES_UP:
                if module.encode() in cmdline.split(b"\0"):
                    found[module] = pid
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_services(hub, timeout: float = 180) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = hub.log_path.read_text(errors="replace")
        pids = _service_pids(hub.proc.pid)
        if all(line in log for line in SERVICES_UP.values()) and len(pids) == len(SERVICES_UP):
            return pids
        time.sleep(0.5)
    raise AssertionError(f"not every service came up:\n{hub.log_tail(80)}")


@pytest.mark.parametrize("sigint", ["default", "ignored"], ids=["ctrl-c", "ctrl-c-started-in-background"])
def test_sigint_stops_the_hub_and_its_services_cleanly(hub_factory, tmp_path, sigint: str) -> None:
    hub = hub_factory(start=False)
    env = {
        "GPUHUB_CULLER": "on",
        "GPUHUB_EXPORTER_PORT": str(free_port()),
        "GPUHUB_TUTORIALS_REPO": str(tmp_path / "no-such-repo.git"),  # the service runs, the sync fails
        "GPUHUB_TUTORIALS_STORE": str(tmp_path / "store"),
    }
    # a shell script's background job starts with SIGINT ignored, and passes that on
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint == "ignored" else None
    try:
        hub.start(wait=False, env=env)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    hub.wait_up(90)
    services = _wait_for_services(hub)

    started = time.monotonic()
    hub.proc.send_signal(signal.SIGINT)
    try:
        code = hub.proc.wait(HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the hub did not stop within {HANG_GUARD_S}s of SIGINT:\n{hub.log_tail(80)}")
    took = time.monotonic() - started
    log = hub.log_path.read_text(errors="replace")

    assert code == 0, log[-6000:]
    assert "Traceback" not in log, log[-6000:]
    assert "...done" in log, log[-6000:]
    left = [module for module, pid in services.items() if _alive(pid)]
    for module in left:
        os.kill(services[module], signal.SIGKILL)
    assert not left, f"still running after the hub stopped: {left}"
    assert took < STOP_BOUND_S, f"the hub took {took:.1f}s to stop:\n{log[-6000:]}"
