"""Per-process attribution on a real driver, from the host's PID namespace and from inside one
of its own (``unshare --pid --fork --mount-proc``), with a real CUDA process holding memory.

Since driver 535.113 NVML hides from a process in a PID namespace the GPU processes outside it:
the node agent in a container's own namespace would see no user's process.  Its PID-view check
(:func:`gpuhub_spawner.node.cgroup.pid_view`) must say so there, and the figures say what this
driver did.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from gpucheck import MIB, hides_foreign_pids
from gpuprocs import find_process, run_probe

from gpuhub_spawner.node.attribution import attribute
from gpuhub_spawner.node.cgroup import ProcReader, pid_view
from gpuhub_spawner.node.nvml import sample_devices

pytestmark = pytest.mark.gpu


def test_host_view_sees_the_cuda_process_and_its_memory(machine, cuda_process, report):
    child = cuda_process([1024])
    assert "error" not in child.doc, child.doc
    t0 = time.perf_counter()
    devices = sample_devices(machine.nvml)
    sample_seconds = time.perf_counter() - t0
    found = find_process(devices, child.pid)
    view = pid_view("/proc")
    report.add(
        "host_view",
        backend=child.doc["backend"],
        cuda_start_seconds=round(child.seconds, 2),
        sample_seconds=round(sample_seconds, 4),
        allocated_bytes=child.allocated_bytes(),
        seen_bytes=found[2].used_bytes if found else None,
        pid_view_host=view.host,
        pid_view_reason=view.reason,
    )
    assert found, f"NVML lists no process {child.pid} on any GPU from the host's view"
    gpu, mig, sample = found
    if sample.used_bytes is not None:
        # what NVML counts includes the CUDA context: at least what was allocated
        assert sample.used_bytes >= child.allocated_bytes(), (sample.used_bytes, child.allocated_bytes())
    containers = {child.pid: ProcReader("/proc").container_of(child.pid)}
    result = attribute(devices, containers, {})
    assert containers[child.pid] is None  # a host process: in no container
    assert result.unattributed.get((gpu, mig), 0) >= 1


def test_pid_namespace_hides_host_processes_and_the_agent_says_so(machine, cuda_process, report):
    unshare = shutil.which("unshare")
    if not unshare:
        pytest.skip("unshare (util-linux) is not installed")
    child = cuda_process([512])
    assert "error" not in child.doc, child.doc
    outside = run_probe()
    assert outside.returncode == 0, outside.stderr[-2000:]
    inside = run_probe(prefix=(unshare, "--pid", "--fork", "--mount-proc"))
    if inside.returncode != 0 and "Operation not permitted" in inside.stderr:
        pytest.skip(f"this machine refuses a new PID namespace: {inside.stderr.strip()[-300:]}")
    assert inside.returncode == 0, inside.stderr[-2000:]
    seen_out, seen_in = json.loads(outside.stdout), json.loads(inside.stdout)
    hidden = child.pid not in seen_in.get("pids", [])  # NVML's pids inside are the namespace's own
    report.add(
        "pid_namespace",
        driver=".".join(map(str, machine.driver)),
        driver_hides_foreign_pids=hides_foreign_pids(machine.driver),
        cuda_pid=child.pid,
        outside=seen_out,
        inside=seen_in,
        hidden_inside=hidden,
        inside_used_mib={k: (v or 0) // MIB for k, v in seen_in.get("used_bytes", {}).items()},
    )
    assert "nvml_error" not in seen_out and "nvml_error" not in seen_in, (seen_out, seen_in)
    assert child.pid in seen_out["pids"], seen_out
    # the agent's check, inside: not the host's PIDs, and why
    assert seen_in["host_pid_view"] is False and seen_in["reason"], seen_in
    if hides_foreign_pids(machine.driver):
        assert hidden, (
            f"driver {machine.driver} showed host process {child.pid} inside a PID namespace: {seen_in}"
        )
    else:
        assert not hidden, f"driver {machine.driver} (< 535.113) hid host process {child.pid}: {seen_in}"
