"""A FAKE of the ``pynvml`` surface that gpuhub uses, with the real library's failure modes.

It stands in for the NVIDIA driver and NVML library, which do not exist on the machines the
tests run on.  Names, return shapes and error classes follow the real ``pynvml`` module
(package ``nvidia-ml-py``); the error classes ARE the real ones (imported from the installed
``pynvml``), so ``except pynvml.NVMLError_NoPermission`` catches what the fake raises and
``NVMLLibraryMismatchError`` is, as in pynvml, not an ``NVMLError``.  Pass a :class:`FakeNVML`
where the ``pynvml`` module is expected; every ``NVML_*`` constant and ``NVMLError_*`` class of
the real module is reachable on it.

What it copies from the real driver and library (each hid a bug once):

- UUIDs and names are ``str`` (or ``bytes``, as old releases returned); memory is in bytes;
  ``nvmlDeviceGetMigMode`` returns ``[current, pending]``; an empty MIG slot (device indices
  have holes) raises ``NotFound``; GPU-instance ids are whatever the fleet says (sparse, not
  0..n-1); ``nvmlDeviceGetGpuInstanceId``/``nvmlDeviceGetComputeInstanceId`` answer on MIG
  handles only.
- Recent drivers name a MIG device "NVIDIA H100 80GB HBM3 MIG 3g.40gb" (``1c.3g.40gb`` for a
  compute instance sharing its GPU instance, ``1g.10gb+me``/``1g.10gb-me`` for media-engine
  variants); older ones give the parent's name only.  ``nvmlDeviceGetAttributes`` gives slice
  counts and memory; ``nvmlDeviceGetGpuInstanceProfileInfo`` (v2 has the profile name, as
  bytes) gives the GPU model's profile table (:data:`GI_PROFILES`).
- R450/R460 drivers print MIG UUIDs as ``MIG-GPU-<gpu uuid>/<gi>/<ci>``
  (``FakeGPU.legacy_mig_uuids``); later ones as ``MIG-<uuid>``.
- PID namespaces (drivers >= 535.113): the caller's view (``pid_view``: host pid -> pid in the
  caller's namespace) translates process ids and DROPS processes it cannot see.  ``None`` is
  the host's namespace (all visible).  ``pid_filtering=False`` is an older driver: host pids,
  none dropped.
- Privileges (``privileged``): unprivileged (in a container, or non-root),
  ``nvmlDeviceGetMemoryInfo`` on a MIG-enabled parent raises ``NoPermission``, GPU instances
  cannot be looked up, and the parent's process list has no per-process memory.  Privileged,
  the parent's list holds the processes of ALL its instances, each with its
  ``gpuInstanceId``/``computeInstanceId`` (callers must filter), and with
  ``mig_handle_lists_all`` a MIG handle does the same.
- Old drivers lack functions (``missing_functions``, C symbol names such as
  ``nvmlDeviceGetComputeRunningProcesses_v3``; :data:`R470_MISSING`): calling one raises
  ``FunctionNotFound``, and the unversioned process query, which pynvml wraps, raises
  ``NVMLLibraryMismatchError`` instead (nvidia-ml-py 13 on an R470 driver).
- Memory ``used`` (v1) includes driver-reserved memory (``reserved_mb``); v2
  (``version=pynvml.nvmlMemory_v2``) reports ``reserved`` apart and ``used`` without it.
  Processes count towards ``used`` whether or not the caller can see them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml as _real
from pynvml import (  # noqa: F401 - re-exported, like pynvml's module attributes
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVMLError,
    NVMLError_FunctionNotFound,
    NVMLError_GpuIsLost,
    NVMLError_NoPermission,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Uninitialized,
    NVMLLibraryMismatchError,
)

_MIB = 1024 * 1024
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId of a process on a GPU without MIG

#: C symbols an R470 driver's libnvidia-ml lacks that nvidia-ml-py 13 calls
R470_MISSING = frozenset({"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetMemoryInfo_v2"})


@dataclass(frozen=True)
class FakeGIProfile:
    """One row of ``nvidia-smi mig -lgip``: the profile constant (``NVML_GPU_INSTANCE_PROFILE_*``),
    its id, slices, memory and name."""

    constant: int
    id: int
    slices: int
    memory_mb: int
    name: str


def _p(constant: str, pid: int, slices: int, memory_mb: int, name: str) -> FakeGIProfile:
    return FakeGIProfile(
        getattr(_real, "NVML_GPU_INSTANCE_PROFILE_" + constant), pid, slices, memory_mb, name
    )


#: GPU-instance profiles per GPU model (a substring of the device name); memory sizes as these
#: models report them (their MiB are below the nominal GB: 3g.40gb is 40192 MiB)
GI_PROFILES: dict[str, list[FakeGIProfile]] = {
    "H100 80GB": [
        _p("1_SLICE", 19, 1, 9856, "MIG 1g.10gb"),
        _p("1_SLICE_REV1", 20, 1, 9856, "MIG 1g.10gb+me"),
        _p("1_SLICE_NO_ME", 33, 1, 9856, "MIG 1g.10gb-me"),
        _p("1_SLICE_REV2", 15, 1, 19968, "MIG 1g.20gb"),
        _p("2_SLICE", 14, 2, 19968, "MIG 2g.20gb"),
        _p("3_SLICE", 9, 3, 40192, "MIG 3g.40gb"),
        _p("4_SLICE", 5, 4, 40192, "MIG 4g.40gb"),
        _p("7_SLICE", 0, 7, 80384, "MIG 7g.80gb"),
    ],
    "A100-SXM4-40GB": [
        _p("1_SLICE", 19, 1, 4864, "MIG 1g.5gb"),
        _p("1_SLICE_REV1", 20, 1, 4864, "MIG 1g.5gb+me"),
        _p("1_SLICE_REV2", 15, 1, 9856, "MIG 1g.10gb"),
        _p("2_SLICE", 14, 2, 9856, "MIG 2g.10gb"),
        _p("3_SLICE", 9, 3, 19968, "MIG 3g.20gb"),
        _p("4_SLICE", 5, 4, 19968, "MIG 4g.20gb"),
        _p("7_SLICE", 0, 7, 40192, "MIG 7g.40gb"),
    ],
}


@dataclass
class FakeProcess:
    """A compute process; ``pid`` is its HOST pid.  An MPS client (``mps_client``) is listed by
    ``nvmlDeviceGetMPSComputeRunningProcesses``, not the compute list (where its server is)."""

    pid: int
    used_bytes: int | None = 0
    mps_client: bool = False


@dataclass
class FakeMIG:
    """One MIG device (a compute instance in a GPU instance).

    ``slices`` is its GPU instance's slice count, ``ci_slices`` its compute instance's (None:
    the whole GPU instance); ``profile`` its real profile name, read from ``name`` when that
    carries it.  ``gpu_instance_id`` None means the slot index.
    """

    uuid: str
    name: str
    memory_mb: int
    slices: int
    gpu_instance_id: int | None = None
    processes: list[FakeProcess] = field(default_factory=list)
    compute_instance_id: int = 0
    ci_slices: int | None = None
    profile: str = ""
    reserved_mb: int = 0


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
    reserved_mb: int = 0  # driver-reserved memory, part of v1 ``used``
    legacy_mig_uuids: bool = False  # R450/R460: MIG-GPU-<uuid>/<gi>/<ci>
    gi_profiles: list[FakeGIProfile] | None = None  # None: GI_PROFILES by model name
    lost: bool = False  # every query raises GpuIsLost (fell off the bus)


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGPU
    mig: FakeMIG | None = None


@dataclass(frozen=True)
class _GpuInstance:
    gpu: FakeGPU
    mig: FakeMIG


def legacy_mig_uuid(gpu_uuid: str, gi: int, ci: int) -> str:
    """A MIG UUID as R450/R460 drivers print it."""
    return f"MIG-{gpu_uuid}/{gi}/{ci}"


class FakeNVML:
    """FAKE ``pynvml`` module over a fixed list of :class:`FakeGPU` (see the module docstring)."""

    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVMLError = NVMLError
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(
        self,
        gpus: list[FakeGPU],
        driver_loaded: bool = True,
        *,
        pid_view: dict[int, int] | None = None,
        pid_filtering: bool = True,
        privileged: bool = True,
        missing_functions: frozenset[str] | set[str] = frozenset(),
        mig_handle_lists_all: bool = False,
    ):
        self.gpus = list(gpus)
        self.driver_loaded = driver_loaded
        self.initialised = False
        self.pid_view = pid_view
        self.pid_filtering = pid_filtering
        self.privileged = privileged
        self.missing_functions = set(missing_functions)
        self.mig_handle_lists_all = mig_handle_lists_all

    def __getattr__(self, name: str) -> Any:
        # constants and error classes of the real module, as ``pynvml.X``
        if name.startswith(("NVML_", "NVMLError_", "nvmlMemory_")):
            return getattr(_real, name)
        raise AttributeError(name)

    def _check(self, symbol: str, handle: _Handle | None = None) -> None:
        if symbol in self.missing_functions:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle is not None and handle.gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount_v2")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check("nvmlDeviceGetHandleByIndex_v2")
        return _Handle(self.gpus[index])

    def _text(self, handle: _Handle, value: str) -> str | bytes:
        return value.encode() if handle.gpu.as_bytes else value

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        self._check("nvmlDeviceGetUUID", handle)
        if handle.mig is not None and handle.gpu.legacy_mig_uuids:
            uuid = legacy_mig_uuid(
                handle.gpu.uuid, self._gi_id(handle.gpu, handle.mig), handle.mig.compute_instance_id
            )
            return self._text(handle, uuid)
        return self._text(handle, (handle.mig or handle.gpu).uuid)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        self._check("nvmlDeviceGetName", handle)
        return self._text(handle, (handle.mig or handle.gpu).name)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> SimpleNamespace:
        self._check("nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo", handle)
        if handle.mig is None and handle.gpu.mig_enabled and not self.privileged:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        item = handle.mig or handle.gpu
        total = item.memory_mb * _MIB
        reserved = item.reserved_mb * _MIB
        if handle.mig is None and handle.gpu.mig_enabled:
            reserved += sum(m.reserved_mb * _MIB for m in handle.gpu.mig_instances if m is not None)
        allocated = sum(p.used_bytes or 0 for p in self._procs(handle))
        if version:
            return SimpleNamespace(
                version=version,
                total=total,
                reserved=reserved,
                free=total - reserved - allocated,
                used=allocated,
            )
        used = reserved + allocated
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        self._check("nvmlDeviceGetMigMode", handle)
        if not handle.gpu.mig_supported or handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        mode = int(handle.gpu.mig_enabled)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        return handle.gpu.max_mig_devices if handle.gpu.mig_supported else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        slots = handle.gpu.mig_instances if handle.gpu.mig_enabled else []
        if index >= len(slots) or slots[index] is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(handle.gpu, slots[index])

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Handle) -> int:
        self._check("nvmlDeviceIsMigDeviceHandle", handle)
        return int(handle.mig is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Handle) -> _Handle:
        self._check("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if handle.mig is None:
            raise NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(handle.gpu)

    def nvmlDeviceGetAttributes(self, handle: _Handle) -> SimpleNamespace:
        self._check("nvmlDeviceGetAttributes_v2", handle)
        if handle.mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        m = handle.mig
        return SimpleNamespace(
            gpuInstanceSliceCount=m.slices,
            computeInstanceSliceCount=m.ci_slices or m.slices,
            memorySizeMB=m.memory_mb,
        )

    def _profiles(self, gpu: FakeGPU) -> list[FakeGIProfile]:
        if gpu.gi_profiles is not None:
            return gpu.gi_profiles
        return next((rows for model, rows in GI_PROFILES.items() if model in gpu.name), [])

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: _Handle, profile: int, version: int = 2
    ) -> SimpleNamespace:
        """Like pynvml: v2 (``nvmlDeviceGetGpuInstanceProfileInfoV``) has the name, as bytes."""
        self._check(
            "nvmlDeviceGetGpuInstanceProfileInfoV" if version == 2 else "nvmlDeviceGetGpuInstanceProfileInfo"
        )
        if handle.mig is not None or not handle.gpu.mig_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        for row in self._profiles(handle.gpu):
            if row.constant == profile:
                info = SimpleNamespace(id=row.id, sliceCount=row.slices, memorySizeMB=row.memory_mb)
                if version == 2:
                    info.name = row.name.encode()
                return info
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetGpuInstanceById(self, handle: _Handle, gpu_instance_id: int) -> _GpuInstance:
        """Needs privileges, as GPU-instance management does in the real library."""
        self._check("nvmlDeviceGetGpuInstanceById", handle)
        if not self.privileged:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        for m in handle.gpu.mig_instances:
            if m is not None and self._gi_id(handle.gpu, m) == gpu_instance_id:
                return _GpuInstance(handle.gpu, m)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, gpu_instance: _GpuInstance) -> SimpleNamespace:
        self._check("nvmlGpuInstanceGetInfo")
        name = gpu_instance.mig.profile or _profile_in(gpu_instance.mig.name)
        name = re.sub(r"^[0-9]+c\.", "", name)  # the GPU instance's own profile
        rows = [r for r in self._profiles(gpu_instance.gpu) if r.name == "MIG " + name]
        if not rows:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(id=self._gi_id(gpu_instance.gpu, gpu_instance.mig), profileId=rows[0].id)

    def _procs(self, handle: _Handle) -> list[FakeProcess]:
        if handle.mig is not None:
            return list(handle.mig.processes)
        if handle.gpu.mig_enabled:
            return [p for m in handle.gpu.mig_instances if m is not None for p in m.processes]
        return list(handle.gpu.processes)

    def _gi_id(self, gpu: FakeGPU, mig: FakeMIG) -> int:
        return mig.gpu_instance_id if mig.gpu_instance_id is not None else gpu.mig_instances.index(mig)

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetIndex", handle)
        if handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self.gpus.index(handle.gpu)

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetGpuInstanceId", handle)
        if handle.mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self._gi_id(handle.gpu, handle.mig)

    def nvmlDeviceGetComputeInstanceId(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetComputeInstanceId", handle)
        if handle.mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle.mig.compute_instance_id

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        """Like pynvml's c_nvmlUtilization_t: ``gpu`` and ``memory`` in percent."""
        self._check("nvmlDeviceGetUtilizationRates", handle)
        if handle.mig is not None or handle.gpu.mig_enabled:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=handle.gpu.utilization, memory=handle.gpu.memory_utilization)

    def _listed(self, handle: _Handle) -> list[tuple[FakeProcess, FakeMIG | None]]:
        """(process, its MIG device) as the driver lists them for this handle and caller."""
        gpu = handle.gpu
        if handle.mig is not None and not (self.privileged and self.mig_handle_lists_all):
            return [(p, handle.mig) for p in handle.mig.processes]
        if gpu.mig_enabled:
            return [(p, m) for m in gpu.mig_instances if m is not None for p in m.processes]
        return [(p, None) for p in gpu.processes]

    def _caller_pid(self, host_pid: int) -> int | None:
        if self.pid_view is None or not self.pid_filtering:
            return host_pid
        return self.pid_view.get(host_pid)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: _Handle) -> list[SimpleNamespace]:
        """Processes on a GPU or MIG instance, in the caller's PID namespace (see the module
        docstring).  An unprivileged caller gets no per-process memory on a MIG parent."""
        self._check("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        return self._running(handle, mps=False)

    def nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle: _Handle) -> list[SimpleNamespace]:
        """MPS clients (:attr:`FakeProcess.mps_client`), like the compute list otherwise."""
        self._check("nvmlDeviceGetMPSComputeRunningProcesses_v3", handle)
        return self._running(handle, mps=True)

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        return self.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle)

    def _running(self, handle: _Handle, mps: bool) -> list[SimpleNamespace]:
        no_memory = handle.mig is None and handle.gpu.mig_enabled and not self.privileged
        result = []
        for p, m in self._listed(handle):
            pid = self._caller_pid(p.pid)
            if pid is None or p.mps_client is not mps:
                continue
            result.append(
                SimpleNamespace(
                    pid=pid,
                    usedGpuMemory=None if no_memory else p.used_bytes,
                    gpuInstanceId=_NO_INSTANCE if m is None else self._gi_id(handle.gpu, m),
                    computeInstanceId=_NO_INSTANCE if m is None else m.compute_instance_id,
                )
            )
        return result

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        """pynvml's unversioned query: a missing ``_v3`` symbol is a library mismatch."""
        try:
            return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except NVMLError_FunctionNotFound:
            raise NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib version."
            ) from None

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[SimpleNamespace]:
        """The R450-R470 query: the same fields as ``_v3``."""
        self._check("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return self._running(handle, mps=False)


def _profile_in(device_name: str) -> str:
    m = re.search(r"MIG\s+(\S+)$", device_name)
    return m.group(1) if m else ""
