"""Host PID -> container id, through ``/proc/<pid>/cgroup``, and whether this process sees the
host's PIDs at all (pure parsing plus two small readers).

NVML reports PIDs.  A process in a Docker container sits in a cgroup whose path names the
container, in one of these forms:

==========================================  ==============================================
cgroup v1 (cgroupfs driver)                 ``12:memory:/docker/<64 hex>``
cgroup v1 (systemd driver)                  ``12:memory:/system.slice/docker-<64 hex>.scope``
cgroup v2 (systemd driver)                  ``0::/system.slice/docker-<64 hex>.scope``
cgroup v2 (cgroupfs driver)                 ``0::/docker/<64 hex>``
cgroupfs driver, ``--cgroup-parent=/x``     ``0::/x/<64 hex>``
nested (a sub-cgroup, Docker in Docker)     ``0::/docker/<outer>/docker/<inner>``,
                                            ``0::/docker/<id>/init.scope``
seen from another (private) cgroup          ``0::/../<64 hex>`` (cgroupfs driver),
namespace                                   ``0::/../docker-<64 hex>.scope`` (systemd driver)
the reader's own cgroup namespace root      ``0::/`` (not another container: None)
==========================================  ==============================================

The innermost container id on the path is the one whose engine runs the process.

Since driver 535.113 NVML translates process ids into the caller's PID namespace and drops the
ones it cannot see: an agent in a container's own PID namespace gets no user's process at all,
and per-user attribution would go empty without a word.  :func:`pid_view` says at start whether
this process shares the host's PID namespace (or the Docker engine's, where the engine itself
runs in a container), and why not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_SCOPE = re.compile(r"^docker-([0-9a-f]{64})\.scope$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def container_ids_in_path(path: str) -> list[str]:
    """Every container id on a cgroup path, outermost first.

    A segment of exactly 64 hex digits is a container id (Docker's cgroupfs driver names the
    cgroup after the id, under ``/docker``, a ``--cgroup-parent``, or ``..`` when seen from a
    private cgroup namespace); so is ``docker-<id>.scope`` (the systemd driver).
    """
    ids = []
    for segment in path.split("/"):
        scope = _SCOPE.match(segment)
        if scope:
            ids.append(scope.group(1))
        elif _HEX64.match(segment):
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
    """Reads ``<host_proc>/<pid>/cgroup``; in a container, run with the host's PID namespace."""

    def __init__(self, host_proc: str = "/proc"):
        self.root = Path(host_proc)

    def container_of(self, pid: int) -> str | None:
        try:
            text = (self.root / str(int(pid)) / "cgroup").read_text()
        except (OSError, ValueError):
            return None  # the process ended, or /proc is not the host's
        return container_id_from_cgroup(text)


# ---- does this process see the host's PIDs? ---------------------------------------------

FIX_PID_VIEW = (
    "run the agent with the host's PID and cgroup namespaces: `gpuhub node agent install` on the "
    "node (a container with --pid=host --cgroupns=host), or as a systemd unit (`gpuhub node agent unit`)"
)


@dataclass(frozen=True)
class PidView:
    """Whether NVML's PIDs here are the host's: ``host`` is True when they are; ``reason`` says
    why not (empty when they are)."""

    host: bool
    reason: str = ""


def status_field(text: str | None, name: str) -> list[str]:
    """The whitespace-separated values of ``name:`` in a ``/proc/<pid>/status`` text."""
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.split()
    return []


def pid_view_from(
    proc_root: str, kthreadd_status: str | None, self_status: str | None, engine_visible: bool = False
) -> PidView:
    """Decide from ``proc_root``'s PID 2 and ``self`` status files, and whether a Docker engine
    process (dockerd, containerd) is listed there.

    In the procfs of a PID namespace, ``NSpid`` of ``self`` lists one PID per namespace from that
    one down to ours: more than one means this process lives in a PID namespace below the one it
    reads (a container with the host's /proc bind-mounted).  With one, the namespace is ours;
    it holds every container's processes when it is the initial one (kernel threads, PID 2
    ``kthreadd`` with parent 0, are visible only there) or the engine's own (Docker in Docker:
    dockerd is listed).  A container's own namespace shows neither.
    """
    nspid = status_field(self_status, "NSpid")
    if not nspid:
        return PidView(False, f"cannot read NSpid in {proc_root}/self/status: not a procfs of this kernel")
    if len(nspid) > 1:
        return PidView(
            False,
            f"the agent runs in a PID namespace of its own (PID {nspid[-1]}, {nspid[0]} in {proc_root}): NVML "
            "hides other containers' processes from it (drivers >= 535.113)",
        )
    kernel = status_field(kthreadd_status, "Name") == ["kthreadd"] and status_field(kthreadd_status, "PPid") == ["0"]
    if not (kernel or engine_visible):
        return PidView(
            False,
            f"{proc_root} is a container's own PID namespace (no kernel threads, no Docker engine): NVML "
            "hides other containers' processes from the agent (drivers >= 535.113)",
        )
    return PidView(True)


_ENGINE = {"dockerd", "containerd"}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def engine_visible(proc_root: str) -> bool:
    """Is a Docker engine process (dockerd, containerd) listed in ``proc_root``?"""
    try:
        entries = [e for e in os.listdir(proc_root) if e.isdigit()]
    except OSError:
        return False
    return any((_read(os.path.join(proc_root, e, "comm")) or "").strip() in _ENGINE for e in entries)


def pid_view(proc_root: str = "/proc") -> PidView:
    """Whether this process sees the host's PIDs through ``proc_root`` (see :func:`pid_view_from`)."""
    kthreadd = _read(os.path.join(proc_root, "2", "status"))
    own = _read(os.path.join(proc_root, "self", "status"))
    kernel = "kthreadd" in (kthreadd or "")
    return pid_view_from(proc_root, kthreadd, own, engine_visible=not kernel and engine_visible(proc_root))
