"""A FAKE of the ``pynvml`` surface that :mod:`gpuhub_spawner.node.nvml` uses.

It stands in for the NVIDIA driver and NVML library, which do not exist on the machines the
tests run on.  Names, return shapes and error classes follow the real ``pynvml`` module
(package ``nvidia-ml-py``): UUIDs and names are ``str`` (or ``bytes``, as old releases
returned), memory is in bytes, ``nvmlDeviceGetMigMode`` returns ``[current, pending]``, and an
empty MIG slot raises ``NVMLError_NotFound``.  Pass a :class:`FakeNVML` where the ``pynvml``
module is expected.

For the node agent it also fakes compute processes (objects with ``pid``, ``usedGpuMemory``,
``gpuInstanceId``, ``computeInstanceId``, as ``nvmlDeviceGetComputeRunningProcesses`` returns),
utilization (``nvmlDeviceGetUtilizationRates`` raises NotSupported on MIG-enabled GPUs and MIG
instances, as the real library does), ``nvmlDeviceGetIndex`` and ``nvmlDeviceGetGpuInstanceId``.
Memory ``used`` is the sum of the processes' memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

# error codes as in pynvml
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9

_MIB = 1024 * 1024
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId of a process on a GPU without MIG


@dataclass
class FakeProcess:
    pid: int
    used_bytes: int | None = 0


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML error code in ``value``."""

    def __init__(self, value: int):
        self.value = value
        super().__init__(value)

    def __str__(self) -> str:
        return f"fake NVML error {self.value}"


class NVMLError_NotFound(NVMLError):  # noqa: N801 - pynvml's spelling
    def __init__(self):
        super().__init__(NVML_ERROR_NOT_FOUND)


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
    def __init__(self):
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


@dataclass
class FakeMIG:
    uuid: str
    name: str
    memory_mb: int
    slices: int
    gpu_instance_id: int | None = None
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass
class FakeGPU:
    """One fake GPU.  ``None`` in ``mig_instances`` is an empty MIG slot."""

    uuid: str
    name: str
    memory_mb: int
    mig_enabled: bool = False
    mig_instances: list[FakeMIG | None] = field(default_factory=list)
    mig_supported: bool = True
    as_bytes: bool = False  # return UUID and name as bytes, like old pynvml
    max_mig_devices: int = 7
    utilization: int = 0  # percent
    memory_utilization: int = 0  # percent
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGPU
    mig: FakeMIG | None = None


class FakeNVML:
    """FAKE ``pynvml`` module over a fixed list of :class:`FakeGPU`."""

    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVMLError = NVMLError
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, gpus: list[FakeGPU], driver_loaded: bool = True):
        self.gpus = list(gpus)
        self.driver_loaded = driver_loaded
        self.initialised = False

    def _check(self) -> None:
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        return _Handle(self.gpus[index])

    def _text(self, handle: _Handle, value: str) -> str | bytes:
        return value.encode() if handle.gpu.as_bytes else value

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        self._check()
        return self._text(handle, (handle.mig or handle.gpu).uuid)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        self._check()
        return self._text(handle, (handle.mig or handle.gpu).name)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> SimpleNamespace:
        self._check()
        total = (handle.mig or handle.gpu).memory_mb * _MIB
        used = sum(p.used_bytes or 0 for p in self._procs(handle))
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        self._check()
        if not handle.gpu.mig_supported or handle.mig is not None:
            raise NVMLError_NotSupported()
        mode = int(handle.gpu.mig_enabled)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._check()
        return handle.gpu.max_mig_devices if handle.gpu.mig_supported else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        self._check()
        slots = handle.gpu.mig_instances if handle.gpu.mig_enabled else []
        if index >= len(slots) or slots[index] is None:
            raise NVMLError_NotFound()
        return _Handle(handle.gpu, slots[index])

    def nvmlDeviceGetAttributes(self, handle: _Handle) -> SimpleNamespace:
        self._check()
        if handle.mig is None:
            raise NVMLError_NotSupported()
        return SimpleNamespace(gpuInstanceSliceCount=handle.mig.slices, memorySizeMB=handle.mig.memory_mb)

    def _procs(self, handle: _Handle) -> list[FakeProcess]:
        if handle.mig is not None:
            return list(handle.mig.processes)
        if handle.gpu.mig_enabled:
            return [p for m in handle.gpu.mig_instances if m is not None for p in m.processes]
        return list(handle.gpu.processes)

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._check()
        if handle.mig is not None:
            raise NVMLError_NotSupported()
        return self.gpus.index(handle.gpu)

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._check()
        if handle.mig is None:
            raise NVMLError_NotSupported()
        if handle.mig.gpu_instance_id is not None:
            return handle.mig.gpu_instance_id
        return handle.gpu.mig_instances.index(handle.mig)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        """Like pynvml's c_nvmlUtilization_t: ``gpu`` and ``memory`` in percent."""
        self._check()
        if handle.mig is not None or handle.gpu.mig_enabled:
            raise NVMLError_NotSupported()
        return SimpleNamespace(gpu=handle.gpu.utilization, memory=handle.gpu.memory_utilization)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        """Processes on a GPU or MIG instance.  On a MIG-enabled GPU's own handle, like the real
        library for an unprivileged caller, memory per process is not available (None)."""
        self._check()
        parent_of_mig = handle.mig is None and handle.gpu.mig_enabled
        result = []
        for p in self._procs(handle):
            gi = _NO_INSTANCE
            if handle.mig is not None:
                gi = self.nvmlDeviceGetGpuInstanceId(handle)
            result.append(
                SimpleNamespace(
                    pid=p.pid,
                    usedGpuMemory=None if parent_of_mig else p.used_bytes,
                    gpuInstanceId=gi,
                    computeInstanceId=0 if handle.mig is not None else _NO_INSTANCE,
                )
            )
        return result
