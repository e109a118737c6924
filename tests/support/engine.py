"""Restart this machine's Docker engine the way it runs here, for the chaos tests.

``deploy/setup-host.sh`` starts ``dockerd`` with ``nohup`` (and, without an NVIDIA driver, a PATH
whose first entry holds the FAKE ``nvidia-container-runtime-hook``).  :func:`restart` reads the
running daemon's command line, environment and working directory from ``/proc``, stops it with
SIGTERM, starts it again exactly so (logging to ``/var/log/gpuhub-dockerd.log``) and waits until
``docker info`` answers.  While it runs, ``/tmp/gpuhub-engine-restart.lock`` exists: other test
sessions on this machine take engine errors then as expected and rerun.

Containers stop when dockerd stops (no live-restore here): so do the swarm rig's node containers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LOCK = Path("/tmp/gpuhub-engine-restart.lock")
PID_FILE = Path("/var/run/docker.pid")
LOG = Path("/var/log/gpuhub-dockerd.log")
LOCAL_SOCKETS = ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")


@dataclass(frozen=True)
class Daemon:
    """A running dockerd as read from /proc."""

    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str


def local_daemon() -> Daemon | str:
    """The dockerd this machine's tests talk to, or why it cannot be restarted from here."""
    if os.geteuid() != 0:
        return "restarting the Docker engine needs root"
    if os.environ.get("DOCKER_HOST", "") not in LOCAL_SOCKETS:
        return f"the Docker engine is remote (DOCKER_HOST={os.environ['DOCKER_HOST']})"
    try:
        pid = int(PID_FILE.read_text().strip())
        proc = Path(f"/proc/{pid}")
        if (proc / "comm").read_text().strip() != "dockerd":
            return f"{PID_FILE} names pid {pid}, which is not dockerd"
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        raw_env = (proc / "environ").read_bytes().split(b"\0")
        cwd = os.readlink(proc / "cwd")
    except (OSError, ValueError) as e:
        return f"no dockerd process visible on this machine ({e})"
    env = dict(item.decode().split("=", 1) for item in raw_env if b"=" in item)
    return Daemon(pid, argv, env, cwd)


def _gone(pid: int) -> bool:
    """Exited (a zombie left by an earlier restart of ours counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(0.2)


def answering() -> bool:
    """``docker info`` answers."""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start(daemon: Daemon) -> subprocess.Popen:
    with open(LOG, "ab") as log:
        # its own session, like nohup from a shell: it outlives this test process
        return subprocess.Popen(
            daemon.argv,
            env=daemon.env,
            cwd=daemon.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def restart(daemon: Daemon, timeout: float = 120) -> float:
    """SIGTERM ``daemon``, start it again the same way; seconds until ``docker info`` answered.

    The lock file exists from before the signal until the engine answers again (or the restart
    failed); whatever happens, a daemon that was stopped here is started again.
    """
    fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # fails if one is under way
    os.write(fd, f"pid {os.getpid()} restarts dockerd (pid {daemon.pid})\n".encode())
    os.close(fd)
    started = None
    begin = time.monotonic()
    try:
        os.kill(daemon.pid, signal.SIGTERM)
        _wait(lambda: _gone(daemon.pid), timeout, "dockerd did not exit on SIGTERM")
        started = _start(daemon)
        _wait(lambda: answering() or started.poll() is not None, timeout, "dockerd did not answer")
        if started.poll() is not None:
            raise RuntimeError(f"dockerd exited with {started.returncode} at start; see {LOG}")
        return time.monotonic() - begin
    finally:
        if started is None and _gone(daemon.pid):
            # interrupted between stop and start: never leave the machine without its engine
            started = _start(daemon)
            _wait(answering, timeout, "dockerd did not answer")
        LOCK.unlink(missing_ok=True)
