"""GPU discovery with NVML (package ``nvidia-ml-py``, module ``pynvml``).

:func:`discover_gpus` returns the same GPU descriptions a static inventory is written in
(see :mod:`gpuhub_spawner.core.inventory`).  The NVML module is passed in, so tests hand it a fake
(``tests/support/fakes/fake_nvml.py``) and a GPU machine hands it the real ``pynvml``.

:func:`sample_devices` reads what the node agent exports: memory used, utilization where NVML
gives it, and the compute processes of every GPU and MIG instance.  :func:`load_nvml` imports
``pynvml``, or the module named by ``GPUHUB_NVML_MODULE`` (tests point it at a fake).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class NVMLUnavailable(RuntimeError):
    """NVML could not be loaded or initialised (no driver, no GPU, no library)."""


def load_nvml() -> ModuleType:
    """Import and initialise ``pynvml``; raises :class:`NVMLUnavailable` if it cannot.

    ``GPUHUB_NVML_MODULE`` names another importable module with the same surface (read at
    call time); the tests use it to run whole processes against a fake NVML.
    """
    name = os.environ.get("GPUHUB_NVML_MODULE", "").strip() or "pynvml"
    try:
        pynvml = importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NVMLUnavailable(f"the NVML module {name!r} cannot be imported ({e})") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NVMLUnavailable(f"NVML did not initialise: {e}") from e
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_profile_name(device_name: str, memory_mb: int, slices: int) -> str:
    """The profile name (``1g.10gb``) of a MIG device.

    Recent drivers put it in the device name ("NVIDIA H100 80GB HBM3 MIG 1g.10gb"); older
    ones give only the slice count and memory, from which the name is derived.
    """
    m = re.search(r"MIG\s+(\S+gb\S*)", device_name)
    if m:
        return m.group(1)
    return f"{slices}g.{max(1, round(memory_mb / 1024))}gb"


def _mig_devices(nvml: ModuleType, handle: Any) -> list[dict[str, Any]]:
    instances = []
    count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    for j in range(count):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue
        memory_mb = nvml.nvmlDeviceGetMemoryInfo(mig).total // (1024 * 1024)
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        name = _text(nvml.nvmlDeviceGetName(mig))
        instances.append(
            {
                "uuid": _text(nvml.nvmlDeviceGetUUID(mig)),
                "profile": _mig_profile_name(name, memory_mb, attrs.gpuInstanceSliceCount),
                "memory_mb": int(memory_mb),
            }
        )
    return instances


def discover_gpus(nvml: ModuleType) -> list[dict[str, Any]]:
    """Describe every GPU NVML sees: UUID, name, memory, and its MIG instances if MIG is on.

    A GPU whose MIG mode is on but which has no MIG instances yet yields no units: it cannot
    run CUDA work until an operator creates instances, so it is logged and left out.
    """
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        gpu: dict[str, Any] = {
            "uuid": uuid,
            "name": _text(nvml.nvmlDeviceGetName(handle)),
            "memory_mb": int(nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)),
            "index": i,
        }
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError_NotSupported:
            current = nvml.NVML_DEVICE_MIG_DISABLE
        if current == nvml.NVML_DEVICE_MIG_ENABLE:
            instances = _mig_devices(nvml, handle)
            if not instances:
                log.warning("GPU %s has MIG enabled but no MIG instances; skipping it", uuid)
                continue
            gpu["mig"] = instances
        gpus.append(gpu)
    return gpus


def discover_or_none() -> list[dict[str, Any]] | None:
    """GPU descriptions from the real NVML, or None where NVML is absent (logged)."""
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        log.info("No NVML on this host (%s); using the static GPU inventory", e)
        return None
    try:
        return discover_gpus(nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutdown failure is harmless
            pass


# ---- sampling for the node agent --------------------------------------------------------


@dataclass
class ProcessSample:
    """One compute process: its host PID and GPU memory (None where NVML cannot tell)."""

    pid: int
    used_bytes: int | None


@dataclass
class MigSample:
    uuid: str
    profile: str
    gpu_instance_id: int | None
    memory_total: int
    memory_used: int
    processes: list[ProcessSample] = field(default_factory=list)


@dataclass
class DeviceSample:
    """One physical GPU.  ``utilization``/``memory_utilization`` are percents, None where
    NVML does not give them (MIG-enabled GPUs); processes of MIG instances are under ``mig``."""

    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int
    utilization: int | None
    memory_utilization: int | None
    processes: list[ProcessSample] = field(default_factory=list)
    mig_enabled: bool = False
    mig: list[MigSample] = field(default_factory=list)


def _processes(nvml: ModuleType, handle: Any) -> list[ProcessSample]:
    try:
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except nvml.NVMLError as e:
        log.debug("no process list for a device: %s", e)
        return []
    found = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        found.append(ProcessSample(int(p.pid), None if used is None else int(used)))
    return found


def _utilization(nvml: ModuleType, handle: Any) -> tuple[int | None, int | None]:
    try:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    except nvml.NVMLError:  # NotSupported on MIG-enabled GPUs and MIG instances
        return None, None
    return int(rates.gpu), int(rates.memory)


def _mig_samples(nvml: ModuleType, handle: Any) -> list[MigSample]:
    found = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue
        memory = nvml.nvmlDeviceGetMemoryInfo(mig)
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        try:
            gi_id: int | None = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
        except nvml.NVMLError:
            gi_id = None
        found.append(
            MigSample(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                profile=_mig_profile_name(
                    _text(nvml.nvmlDeviceGetName(mig)), memory.total // (1024 * 1024), attrs.gpuInstanceSliceCount
                ),
                gpu_instance_id=gi_id,
                memory_total=int(memory.total),
                memory_used=int(memory.used),
                processes=_processes(nvml, mig),
            )
        )
    return found


def sample_devices(nvml: ModuleType) -> list[DeviceSample]:
    """Memory, utilization and compute processes of every GPU and MIG instance, read once.

    On a MIG-enabled GPU the processes are read per MIG instance (on the MIG device handle,
    where NVML gives per-process memory); NVML gives no utilization per MIG instance.
    """
    samples = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError_NotSupported:
            current = nvml.NVML_DEVICE_MIG_DISABLE
        mig_enabled = current == nvml.NVML_DEVICE_MIG_ENABLE
        util, mem_util = _utilization(nvml, handle)
        samples.append(
            DeviceSample(
                index=i,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_total=int(memory.total),
                memory_used=int(memory.used),
                utilization=util,
                memory_utilization=mem_util,
                processes=[] if mig_enabled else _processes(nvml, handle),
                mig_enabled=mig_enabled,
                mig=_mig_samples(nvml, handle) if mig_enabled else [],
            )
        )
    return samples
