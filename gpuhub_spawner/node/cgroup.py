"""Host PID -> container id, through ``/proc/<pid>/cgroup`` (pure parsing plus one small reader).

NVML reports host PIDs.  A process in a Docker container sits in a cgroup whose path names the
container, in one of these forms:

==========================================  ==============================================
cgroup v1 (cgroupfs driver)                 ``12:memory:/docker/<64 hex>``
cgroup v2 (systemd driver)                  ``0::/system.slice/docker-<64 hex>.scope``
cgroup v2 (cgroupfs driver)                 ``0::/docker/<64 hex>``
nested (a sub-cgroup, Docker in Docker)     ``0::/docker/<outer>/docker/<inner>``,
                                            ``0::/docker/<id>/init.scope``
seen from another cgroup namespace          ``0::/../docker-<64 hex>.scope``
==========================================  ==============================================

The innermost container id on the path is the one whose engine runs the process.
"""

from __future__ import annotations

import re
from pathlib import Path

_SCOPE = re.compile(r"^docker-([0-9a-f]{64})\.scope$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def container_ids_in_path(path: str) -> list[str]:
    """Every container id on a cgroup path, outermost first."""
    segments = [s for s in path.split("/") if s]
    ids = []
    for i, segment in enumerate(segments):
        scope = _SCOPE.match(segment)
        if scope:
            ids.append(scope.group(1))
        elif i > 0 and segments[i - 1] == "docker" and _HEX64.match(segment):
            ids.append(segment)
    return ids


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the text of a ``/proc/<pid>/cgroup`` file, or None (not in a container).

    The unified (v2, ``0::``) line wins; else the first v1 line that names a container.
    """
    best: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ids = container_ids_in_path(parts[2])
        if not ids:
            continue
        if parts[0] == "0" and not parts[1]:
            return ids[-1]
        if best is None:
            best = ids[-1]
    return best


class ProcReader:
    """Reads ``<host_proc>/<pid>/cgroup``; in a container, mount the host's /proc at /host/proc."""

    def __init__(self, host_proc: str = "/proc"):
        self.root = Path(host_proc)

    def container_of(self, pid: int) -> str | None:
        try:
            text = (self.root / str(int(pid)) / "cgroup").read_text()
        except (OSError, ValueError):
            return None  # the process ended, or /proc is not the host's
        return container_id_from_cgroup(text)
