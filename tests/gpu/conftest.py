"""Fixtures of the checks on a real GPU (marker ``gpu``; ``tests/gpu/run-on-device.sh`` runs them).

Where there is no NVIDIA driver every check skips with the reason, in CI too: CI has no GPU,
and a missing GPU is not a failure there.  Each check records its figures in one
:class:`gpucheck.Report`, written as JSON at the end of a run on a GPU machine (``$OUT`` on a
lent machine, see :func:`gpucheck.report_file`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import gpucheck
import gpuprocs
import pytest

REPORT = gpucheck.Report()
_GPU_FOUND: list[bool] = []


@dataclass
class Machine:
    """The GPU machine as NVML and nvidia-smi describe it."""

    nvml: ModuleType
    driver: tuple[int, ...]
    smi: str | None  # path of nvidia-smi, None where it is absent
    smi_list: list[gpucheck.SmiGpu] = field(default_factory=list)

    def smi_run(self, *args: str, timeout: float = 60) -> str:
        if not self.smi:
            pytest.skip("nvidia-smi is not installed on this machine")
        return subprocess.run(
            [self.smi, *args], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _memory_mib(nvml: ModuleType, handle: Any) -> int | None:
    try:
        return nvml.nvmlDeviceGetMemoryInfo(handle).total // gpucheck.MIB
    except nvml.NVMLError:  # NoPermission on a MIG-enabled GPU for a non-root caller
        return None


def _describe(nvml: ModuleType) -> dict[str, Any]:
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        try:
            mig = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
        except nvml.NVMLError:
            mig = None
        gpus.append(
            {
                "index": i,
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                "memory_total_mib": _memory_mib(nvml, handle),
                "mig_enabled": mig,
            }
        )
    return {
        "driver": _text(nvml.nvmlSystemGetDriverVersion()),
        "nvml": _text(nvml.nvmlSystemGetNVMLVersion()),
        "cuda_driver": nvml.nvmlSystemGetCudaDriverVersion(),
        "gpus": gpus,
    }


@pytest.fixture(scope="session")
def machine() -> Machine:
    """The real NVML, initialised; skips (never fails, CI included) where there is none."""
    name = os.environ.get("GPUHUB_NVML_MODULE", "").strip()
    if name and name != "pynvml":
        pytest.skip(f"these checks need the real NVML; GPUHUB_NVML_MODULE={name} names another module")
    try:
        from gpuhub_spawner.node.nvml import NVMLUnavailable, load_nvml
    except ImportError as e:
        pytest.skip(f"gpuhub's node side cannot be imported here ({e}): run tests/gpu/run-on-device.sh")
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        pytest.skip(f"no NVIDIA driver on this machine ({e})")
    described = _describe(nvml)
    smi = gpucheck.driver_tool("nvidia-smi")
    found = Machine(nvml, gpucheck.parse_driver_version(described["driver"]), smi)
    if smi:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
        found.smi_list = gpucheck.parse_smi_list(listing.stdout)
        described["nvidia_smi_L"] = listing.stdout.strip()
    described["python"] = sys.version.split()[0]
    _GPU_FOUND.append(True)
    REPORT.add("machine", **described)
    return found


@pytest.fixture(scope="session")
def report() -> gpucheck.Report:
    return REPORT


@pytest.fixture
def cuda_process() -> Iterator:
    """Start real CUDA processes (``start([1024])``: 1 GiB on device 0) that hold their memory
    until the test ends (or ``.stop()``)."""
    started: list[gpuprocs.CudaProcess] = []

    def start(mib: list[int], env: dict[str, str] | None = None) -> gpuprocs.CudaProcess:
        try:
            child = gpuprocs.start_cuda(mib, env)
        except gpuprocs.ChildSaidNothing as e:
            pytest.fail(str(e), pytrace=False)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


# ---- the report ------------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/gpu/"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = report.outcome if report.when == "call" or report.skipped else "error"
        reason = gpucheck.skip_reason_of(report.longrepr) if report.skipped else ""
        if report.failed:
            reason = str(report.longrepr)[-1500:]
        REPORT.outcome(report.nodeid, outcome, report.duration, reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not gpucheck.wants_report(os.environ, bool(_GPU_FOUND)):
        return
    path = gpucheck.report_file(os.environ, gpucheck.temp_dir)
    REPORT.write(path)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"gpu report: {path}")
