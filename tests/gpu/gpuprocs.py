"""The child processes of the GPU checks: real CUDA processes (``cuda_child.py``) and the probe
of what gpuhub's node side sees (``ns_probe.py``), started from this tree with the real NVML."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpucheck import MIB

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the checks' child processes: gpuhub importable from this tree, the
    real NVML (no fake module named), CUDA devices numbered as NVML numbers them."""
    env = {k: v for k, v in os.environ.items() if k != "GPUHUB_NVML_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class CudaProcess:
    """A running ``cuda_child.py``: its pid, what it said, and how long it took to say it."""

    proc: subprocess.Popen
    doc: dict[str, Any]
    seconds: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def allocated_bytes(self) -> int:
        return sum(a["mib"] for a in self.doc.get("allocations", []) if a.get("ok")) * MIB

    def stop(self) -> None:
        """Close its stdin (it frees its memory and exits); kill it if it does not."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class ChildSaidNothing(RuntimeError):
    pass


def start_cuda(mib: list[int], env: dict[str, str] | None = None, timeout: float = 120) -> CudaProcess:
    """Start ``cuda_child.py`` allocating ``mib`` (one allocation each) and wait for its report."""
    args = [sys.executable, str(HERE / "cuda_child.py"), *[f"--mib={m}" for m in mib]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or child_env(),
    )
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise ChildSaidNothing(f"the CUDA process said nothing in {timeout:.0f} s; its stderr: {err[-2000:]}")
    return CudaProcess(proc, json.loads(line), time.perf_counter() - t0)


def find_process(devices: list, pid: int) -> tuple[str, str, Any] | None:
    """(GPU UUID, MIG UUID or '', its ProcessSample) of ``pid`` in an NVML sample, or None."""
    for d in devices:
        for mig, procs in [("", d.processes)] + [(m.uuid, m.processes) for m in d.mig]:
            for p in procs:
                if p.pid == pid:
                    return d.uuid, mig, p
    return None


def run_probe(prefix: tuple[str, ...] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """``ns_probe.py`` (what gpuhub's node side sees), optionally under ``prefix`` (``unshare …``)."""
    return subprocess.run(
        [*prefix, sys.executable, str(HERE / "ns_probe.py")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
