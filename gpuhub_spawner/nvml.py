"""GPU discovery with NVML (package ``nvidia-ml-py``, module ``pynvml``).

:func:`discover_gpus` returns the same GPU descriptions a static inventory is written in
(see :mod:`gpuhub_spawner.inventory`).  The NVML module is passed in, so tests hand it a fake
(``tests/fakes/fake_nvml.py``) and a GPU machine hands it the real ``pynvml``.
"""

from __future__ import annotations

import logging
import re
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class NVMLUnavailable(RuntimeError):
    """NVML could not be loaded or initialised (no driver, no GPU, no library)."""


def load_nvml() -> ModuleType:
    """Import and initialise ``pynvml``; raises :class:`NVMLUnavailable` if it cannot."""
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NVMLUnavailable("the nvidia-ml-py package is not installed") from e
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
