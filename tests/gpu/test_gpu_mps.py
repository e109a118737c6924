"""An MPS client cannot allocate past its slot's limit, set the way gpuhub sets it
(:mod:`gpuhub_spawner.core.mps`): the control daemon's defaults, sent through its control pipe
before any client connects, hold even for a client that unset or raised the limit in its
environment (that environment is the user's to change).

The daemon here runs on the host with a private pipe and log folder (the node's own daemon is a
container, :func:`gpuhub_spawner.core.mps.daemon_spec`); nothing else on the machine uses that
pipe, and no GPU setting is changed (no compute mode, no MIG).  It is always told to quit.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from gpucheck import driver_tool, mps_skip_reason
from gpuprocs import child_env, find_process

from gpuhub_spawner.core import mps
from gpuhub_spawner.node.nvml import sample_devices

pytestmark = pytest.mark.gpu
COMPUTE_MODES = {0: "Default", 1: "ExclusiveThread", 2: "Prohibited", 3: "ExclusiveProcess"}
#: a slot of about this size: small enough to allocate past quickly on any GPU
SLOT_MIB = 4096


def _control(control: str, env: dict[str, str], command: str) -> str:
    done = subprocess.run(
        [control], input=command + "\n", capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, f"{command!r}: {done.stdout} {done.stderr}"
    return done.stdout.strip()


def _environ(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().split(b"\0")
    except OSError:  # ended meanwhile, or not ours to read
        return []


def _ours(pipe: Path) -> list[int]:
    """Processes started with our pipe folder (the daemon and its server), by pid."""
    marker = f"CUDA_MPS_PIPE_DIRECTORY={pipe}".encode()
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/environ") if marker in _environ(p)]


@pytest.fixture
def mps_daemon(machine, tmp_path, report):
    """A control daemon for GPU 0 with gpuhub's slot limits; yields (control, env, limits)."""
    control = driver_tool("nvidia-cuda-mps-control")
    nvml = machine.nvml
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    try:
        mig = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
    except nvml.NVMLError:
        mig = False
    try:
        mode = COMPUTE_MODES.get(nvml.nvmlDeviceGetComputeMode(handle), "unknown")
    except nvml.NVMLError:
        mode = "unknown"
    reason = mps_skip_reason(control, mig, mode)
    if reason:
        pytest.skip(reason)
    uuid = nvml.nvmlDeviceGetUUID(handle)
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    gpu_mib = nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
    slots = max(2, (gpu_mib - mps.DEFAULT_HEADROOM_MB) // SLOT_MIB)
    limits = mps.slot_limits(gpu_mib, slots)
    pipe, logs = tmp_path / "pipe", tmp_path / "log"
    pipe.mkdir()
    logs.mkdir()
    spec = mps.daemon_spec(uuid, limits, image="(none: on the host)")
    env = child_env(
        **{**spec.environment, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    )
    t0 = time.perf_counter()
    started = subprocess.run([control, "-d"], capture_output=True, text=True, env=env, timeout=60)
    assert started.returncode == 0, f"nvidia-cuda-mps-control -d: {started.stdout} {started.stderr}"
    try:
        for _ in range(100):
            if (pipe / "control").exists():
                break
            time.sleep(0.1)
        for command in mps.control_commands(limits, client_uid=os.getuid()):
            _control(control, env, command)
        report.add(
            "mps",
            compute_mode=mode,
            slots=slots,
            limit_mib=limits.memory_mb,
            thread_percentage=limits.thread_percentage,
            daemon_seconds=round(time.perf_counter() - t0, 2),
        )
        yield control, env, limits
    finally:
        report.add(
            "mps", control_log_tail=_tail(logs / "control.log"), server_log_tail=_tail(logs / "server.log")
        )
        subprocess.run([control], input="quit\n", capture_output=True, text=True, env=env, timeout=60)
        for _ in range(100):
            if not _ours(pipe):
                break
            time.sleep(0.1)
        for pid in _ours(pipe):  # ours alone: they carry our private pipe folder
            os.kill(pid, 9)


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
    except OSError:
        return ""


@pytest.mark.parametrize("client", ["as-spawned", "limit-unset", "limit-raised"])
def test_mps_client_cannot_allocate_past_its_limit(machine, mps_daemon, cuda_process, report, client):
    control, daemon_env, limits = mps_daemon
    free_mib = machine.nvml.nvmlDeviceGetMemoryInfo(machine.nvml.nvmlDeviceGetHandleByIndex(0)).free // (
        1024 * 1024
    )
    quarter = limits.memory_mb // 4
    plan = [quarter, quarter, limits.memory_mb]  # half the limit, then past it
    assert sum(plan) < free_mib, (
        f"the GPU has {free_mib} MiB free: too little to show a limit of {limits.memory_mb} MiB"
    )
    # as the spawner wires a client, with the pipe folder of this daemon and only its GPU visible
    env = child_env(
        **{
            **mps.client_env(limits),
            "CUDA_MPS_PIPE_DIRECTORY": daemon_env["CUDA_MPS_PIPE_DIRECTORY"],
            "CUDA_VISIBLE_DEVICES": daemon_env["CUDA_VISIBLE_DEVICES"],
        }
    )
    # the client's environment is the user's to change: the daemon's default must hold anyway
    if client == "limit-unset":
        env.pop("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
        env.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    elif client == "limit-raised":
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={4 * limits.memory_mb}M"
    child = cuda_process(plan, env=env)
    devices = sample_devices(machine.nvml)
    listed = find_process(devices, child.pid)
    servers = _control(control, daemon_env, "get_server_list").split()
    clients = [_control(control, daemon_env, f"get_client_list {server}").split() for server in servers]
    report.add(
        f"mps_{client}",
        plan_mib=plan,
        allocations=child.doc.get("allocations"),
        error=child.doc.get("error"),
        backend=child.doc.get("backend"),
        client_seconds=round(child.seconds, 2),
        mps_servers=servers,
        mps_clients=clients,
        nvml_client=listed and {"mps_client": listed[2].mps_client, "used_bytes": listed[2].used_bytes},
        nvml_pids=sorted({p.pid for d in devices for p in d.processes}),
    )
    assert "error" not in child.doc, child.doc
    results = child.doc["allocations"]
    assert results[0]["ok"] and results[1]["ok"], f"under the limit of {limits.memory_mb} MiB: {results}"
    assert not results[2]["ok"], f"past the limit of {limits.memory_mb} MiB the allocation worked: {results}"
    assert results[2]["out_of_memory"], results[2]
    assert any(str(child.pid) in pids for pids in clients), f"{child.pid} is no MPS client: {clients}"
    # the agent attributes MPS clients through NVML's MPS client list
    assert listed and listed[2].mps_client, f"NVML does not list MPS client {child.pid} as one: {listed}"
