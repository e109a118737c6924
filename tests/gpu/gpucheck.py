"""What the checks on a real GPU (``tests/gpu``) need beside the tests themselves.

Pure parts, unit-tested here where no GPU exists (``test_gpucheck_units.py``): reading
``nvidia-smi -L``, which drivers hide processes of other PID namespaces, the decisions to skip
a check (each returns the reason it cannot run, or None), and the JSON report of figures the
run leaves in ``$OUT``.  The few probes of the machine (is there a binary, a cgroup v2 tree) are
kept small and separate, at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: since this driver NVML translates process ids into the caller's PID namespace and drops the
#: processes it cannot see there (issue 14)
PID_NAMESPACE_DRIVER = (535, 113)
#: where the driver's tools may be when they are not on PATH (a lent machine mounts the driver
#: at /usr/local/nvidia; distributions put them in /usr/bin)
DRIVER_BIN_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin")
REPORT_NAME = "gpu-report.json"
MIB = 1024 * 1024


# ---- nvidia-smi ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmiMig:
    profile: str
    device: int
    uuid: str


@dataclass(frozen=True)
class SmiGpu:
    index: int
    name: str
    uuid: str
    mig: tuple[SmiMig, ...] = ()


_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s+(.+?)\s+\(UUID:\s*(GPU-[^)\s]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s+\(UUID:\s*(MIG-[^)\s]+)\)\s*$")


def parse_smi_list(text: str) -> list[SmiGpu]:
    """The GPUs and MIG devices in ``nvidia-smi -L``'s output, in its order.

    ``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-…)`` then, with MIG on, one indented
    ``MIG 1g.10gb Device 0: (UUID: MIG-…)`` per instance (legacy drivers: ``MIG-GPU-…/1/0``).
    A line of neither shape (a warning, a blank) is ignored.
    """
    gpus: list[SmiGpu] = []
    for line in text.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            gpus.append(SmiGpu(int(gpu.group(1)), gpu.group(2), gpu.group(3)))
            continue
        mig = _MIG_LINE.match(line)
        if mig and gpus:
            last = gpus[-1]
            entry = SmiMig(mig.group(1), int(mig.group(2)), mig.group(3))
            gpus[-1] = SmiGpu(last.index, last.name, last.uuid, last.mig + (entry,))
    return gpus


def parse_driver_version(text: str) -> tuple[int, ...]:
    """``"535.113.01"`` -> ``(535, 113, 1)``; ``()`` when the text holds no version."""
    m = re.search(r"\d+(?:\.\d+)*", text or "")
    return tuple(int(part) for part in m.group(0).split(".")) if m else ()


def hides_foreign_pids(driver: tuple[int, ...]) -> bool:
    """Does this driver hide, from a process in a PID namespace, the GPU processes outside it?"""
    return bool(driver) and driver[:2] >= PID_NAMESPACE_DRIVER


# ---- when a check cannot run ----------------------------------------------------------------------


def mps_skip_reason(control: str | None, mig_enabled: bool, compute_mode: str) -> str | None:
    """Why the MPS check cannot run on this GPU, or None.  It never changes a GPU setting, so a
    GPU that is not already usable by MPS is a skip, not something to fix."""
    if not control:
        return (
            "nvidia-cuda-mps-control is not installed on this machine (it comes with the driver's utilities)"
        )
    if mig_enabled:
        return "MIG is on for GPU 0: gpuhub does not run MPS on MIG instances (and this check never changes MIG mode)"
    if compute_mode.lower() == "prohibited":
        return "GPU 0's compute mode is Prohibited (this check never changes it)"
    return None


def docker_skip_reason(
    docker_cli: str | None, engine: str, toolkit: bool, image: str, image_found: bool
) -> str | None:
    """Why the user-image check cannot run, or None.  ``engine`` is '' when the engine answered,
    else what went wrong; images cannot be fetched onto a lent machine, so a missing image skips."""
    if not docker_cli:
        return "no docker command on this machine"
    if engine:
        return f"the Docker engine does not answer: {engine}"
    if not toolkit:
        return "the NVIDIA container toolkit is not installed (no nvidia runtime or nvidia-ctk)"
    if not image_found:
        return (
            f"image {image} is not on this machine (build it with images/build.sh pytorch, or docker load it)"
        )
    return None


def report_file(env: Mapping[str, str], make_temp: Callable[[], str]) -> Path:
    """Where the JSON report goes: ``GPUHUB_GPU_REPORT``, else ``$OUT/gpu-report.json`` (what a
    device run brings back), else a new temporary folder's ``gpu-report.json``."""
    if env.get("GPUHUB_GPU_REPORT"):
        return Path(env["GPUHUB_GPU_REPORT"])
    if env.get("OUT"):
        return Path(env["OUT"]) / REPORT_NAME
    return Path(make_temp()) / REPORT_NAME


def wants_report(env: Mapping[str, str], gpu_found: bool) -> bool:
    """A report is written on a GPU machine, or when asked for; a run that skipped for want of
    a GPU leaves no file behind."""
    return gpu_found or bool(env.get("GPUHUB_GPU_REPORT") or env.get("OUT"))


# ---- the report -------------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures the checks record (driver, GPUs, timings, memory seen vs allocated) and every
    test's outcome, as one JSON document."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, section: str, **values: Any) -> None:
        self.figures.setdefault(section, {}).update(values)

    def outcome(self, nodeid: str, outcome: str, seconds: float, reason: str = "") -> None:
        entry: dict[str, Any] = {"test": nodeid, "outcome": outcome, "seconds": round(seconds, 3)}
        if reason:
            entry["reason"] = reason
        self.tests.append(entry)

    def document(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        summary: dict[str, int] = {}
        for entry in self.tests:
            summary[entry["outcome"]] = summary.get(entry["outcome"], 0) + 1
        return {
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(now - self.started, 1),
            "summary": summary,
            "figures": self.figures,
            "tests": self.tests,
        }

    def write(self, path: Path) -> str:
        """Write the document to ``path`` (its folder is made) and return its text."""
        text = json.dumps(self.document(), indent=2, sort_keys=True, default=str)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        return text


def skip_reason_of(longrepr: Any) -> str:
    """The reason of a skipped test's report (pytest gives ``(file, line, "Skipped: …")``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


# ---- probes of this machine ------------------------------------------------------------------------


def driver_tool(name: str) -> str | None:
    """A driver utility (``nvidia-smi``, ``nvidia-cuda-mps-control``) on PATH or where drivers put it."""
    found = shutil.which(name)
    if found:
        return found
    for folder in DRIVER_BIN_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def cgroup2_root() -> Path | None:
    """The unified cgroup tree, when it is mounted and this process may make cgroups in it."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").is_file() and os.access(root, os.W_OK):
        return root
    return None


def temp_dir() -> str:
    return tempfile.mkdtemp(prefix="gpuhub-gpu-")
