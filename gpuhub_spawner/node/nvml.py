"""GPU discovery with NVML (package ``nvidia-ml-py``, module ``pynvml``).

:func:`discover_gpus` returns the same GPU descriptions a static inventory is written in
(see :mod:`gpuhub_spawner.core.inventory`).  The NVML module is passed in, so tests hand it a fake
(``tests/support/fakes/fake_nvml.py``) and a GPU machine hands it the real ``pynvml``.

Real drivers differ in what they give (the fake copies each): MIG profile names come from the
device name, else the GPU-instance profile table, else are derived with a warning
(:func:`mig_profile_name`); a MIG-enabled GPU's memory is refused to unprivileged callers
(``NoPermission``: a fallback, logged); R450/R460 drivers print MIG UUIDs as
``MIG-GPU-<gpu uuid>/<gi>/<ci>``, passed on verbatim because the NVIDIA container CLI matches
``NVIDIA_VISIBLE_DEVICES`` against the UUIDs its own driver reports; a GPU NVML fails on is left
out with what to do (:func:`explain`), never replaced by "all GPUs".

:func:`sample_devices` reads what the node agent exports: memory used, utilization where NVML
gives it, and the compute processes of every GPU and MIG instance.  :func:`load_nvml` imports
``pynvml``, or the module named by ``GPUHUB_NVML_MODULE`` (tests point it at a fake).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from gpuhub_spawner.core import mig_profiles

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


def _mb(value: int) -> int:
    return int(value) // (1024 * 1024)


def nvml_errors(nvml: Any) -> tuple[type[BaseException], ...]:
    """What an NVML call may raise: ``NVMLError`` (one subclass per code) and, in pynvml,
    ``NVMLLibraryMismatchError``, which is NOT an ``NVMLError`` (nvidia-ml-py newer than the
    driver's library: 13 on an R470 driver)."""
    mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
    return (nvml.NVMLError, mismatch) if isinstance(mismatch, type) else (nvml.NVMLError,)


#: error class name -> what to do (the message says what happened)
_FIXES = {
    "NVMLLibraryMismatchError": "nvidia-ml-py is newer than this driver's NVML library: install the "
    "nvidia-ml-py release of the driver's branch, or upgrade the driver",
    "NVMLError_FunctionNotFound": "the driver is older than nvidia-ml-py expects: upgrade the driver, "
    "or install an older nvidia-ml-py",
    "NVMLError_NoPermission": "run this as root (a MIG-enabled GPU needs privileges), or list the GPUs "
    "in the static inventory",
    "NVMLError_GpuIsLost": "the GPU fell off the bus: check the kernel log (dmesg) and reset or replace it",
    "NVMLError_LibRmVersionMismatch": "the driver was upgraded without a reboot: reboot the node",
}


def explain(error: BaseException) -> str:
    """One line for an NVML failure: what happened and what to do (no traceback)."""
    name = type(error).__name__
    fix = _FIXES.get(name, "check the NVIDIA driver (nvidia-smi), or list the GPUs in the static inventory")
    return f"{name}: {error}; {fix}"


@dataclass(frozen=True)
class GIProfile:
    """One GPU-instance profile a GPU offers (``nvidia-smi mig -lgip``)."""

    id: int
    slices: int
    memory_mb: int
    name: str


def mig_on(nvml: Any, handle: Any) -> bool:
    """Whether MIG mode is on (False on GPUs without MIG and drivers older than MIG)."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
        return False
    return bool(current == nvml.NVML_DEVICE_MIG_ENABLE)


def profile_table(nvml: Any, handle: Any) -> list[GIProfile]:
    """The GPU's GPU-instance profiles with their names (profile info v2; none on drivers
    without it).  Needs no privileges."""
    rows = []
    for constant in range(int(getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
        try:
            info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, constant)
        except nvml_errors(nvml):
            continue  # not offered on this GPU, or no v2 in this driver
        name = mig_profiles.gi_profile_name(_text(getattr(info, "name", b"")))
        if mig_profiles.is_profile(name):
            rows.append(GIProfile(int(info.id), int(info.sliceCount), int(info.memorySizeMB), name))
    return rows


def _profile_by_instance(nvml: Any, parent: Any, mig: Any, table: list[GIProfile]) -> str:
    """The profile of a MIG device's GPU instance by its profile id: exact, but looking a GPU
    instance up needs privileges ('' without them)."""
    try:
        gi = nvml.nvmlDeviceGetGpuInstanceById(parent, nvml.nvmlDeviceGetGpuInstanceId(mig))
        profile_id = int(nvml.nvmlGpuInstanceGetInfo(gi).profileId)
    except (*nvml_errors(nvml), AttributeError):
        return ""
    return next((row.name for row in table if row.id == profile_id), "")


def mig_profile_name(
    nvml: Any, parent: Any, mig: Any, table: list[GIProfile] | None, parent_mb: int | None
) -> str:
    """The profile name (``1g.10gb``, ``1g.10gb+me``, ``1c.3g.40gb``) of a MIG device.

    In order: the device name (recent drivers: "NVIDIA H100 80GB HBM3 MIG 3g.40gb"); its GPU
    instance's profile id (privileged); the profile table (``None``: read it) matched by slices
    and memory (a warning where media-engine variants cannot be told apart); derived from the
    memory as the last resort, with a warning.
    """
    named = mig_profiles.profile_in_device_name(_text(nvml.nvmlDeviceGetName(mig)))
    if named:
        return named
    attrs = nvml.nvmlDeviceGetAttributes(mig)
    gi_slices, memory_mb = int(attrs.gpuInstanceSliceCount), int(attrs.memorySizeMB)
    ci_slices = int(getattr(attrs, "computeInstanceSliceCount", 0) or gi_slices)
    uuid = _text(nvml.nvmlDeviceGetUUID(mig))
    table = profile_table(nvml, parent) if table is None else table
    name = _profile_by_instance(nvml, parent, mig, table)
    if not name:
        candidates = mig_profiles.match_profile(
            ((r.slices, r.memory_mb, r.name) for r in table), gi_slices, memory_mb
        )
        if len(candidates) > 1:
            log.warning(
                "MIG device %s could be any of %s (same slices and memory); naming it %s. To be sure, run "
                "as root, or use a driver that names MIG devices, or list it in the static inventory",
                uuid, ", ".join(candidates), candidates[0],
            )  # fmt: skip
        name = candidates[0] if candidates else ""
    if not name:
        name = mig_profiles.derive_profile(gi_slices, memory_mb, parent_mb)
        log.warning(
            "MIG device %s: the driver gives no profile name; derived '%s' from %d slices and %d MiB, "
            "which may be wrong. Check with nvidia-smi -L and list it in the static inventory if so",
            uuid, name, gi_slices, memory_mb,
        )  # fmt: skip
    return mig_profiles.with_compute_prefix(name, gi_slices, ci_slices)


def _mig_devices(
    nvml: Any, handle: Any, table: list[GIProfile], parent_mb: int | None
) -> list[dict[str, Any]]:
    """The MIG devices of a GPU; one NVML cannot describe is left out (logged): fail closed."""
    instances = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue  # device indices have holes
        try:
            instances.append(
                {
                    "uuid": _text(nvml.nvmlDeviceGetUUID(mig)),
                    "profile": mig_profile_name(nvml, handle, mig, table, parent_mb),
                    "memory_mb": _mb(nvml.nvmlDeviceGetMemoryInfo(mig).total),
                }
            )
        except nvml_errors(nvml) as e:
            log.warning("MIG device %d of a GPU left out: %s", j, explain(e))
    return instances


def mig_parent_memory(nvml: Any, handle: Any, uuid: str, fallback_mb: int, why: str) -> tuple[int, bool]:
    """(MiB, exact) of a MIG-enabled GPU.  Unprivileged (in a container, or non-root), NVML
    refuses it with ``NoPermission``: then ``fallback_mb`` (``why`` says what it is), logged."""
    try:
        return _mb(nvml.nvmlDeviceGetMemoryInfo(handle).total), True
    except nvml.NVMLError_NoPermission:
        log.warning(
            "GPU %s has MIG on and NVML refuses its memory to this unprivileged process; using %d MiB, %s. "
            "Run as root for the exact figure",
            uuid, fallback_mb, why,
        )  # fmt: skip
        return fallback_mb, False


def _describe_gpu(nvml: Any, index: int) -> dict[str, Any] | None:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    gpu: dict[str, Any] = {
        "uuid": uuid,
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_mb": 0,
        "index": index,
    }
    if not mig_on(nvml, handle):
        gpu["memory_mb"] = _mb(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        return gpu
    table = profile_table(nvml, handle)
    largest = max((row.memory_mb for row in table), default=0)
    memory, exact = mig_parent_memory(nvml, handle, uuid, largest, "its largest MIG profile's")
    instances = _mig_devices(nvml, handle, table, memory if exact else None)
    if not instances:
        log.warning("GPU %s has MIG enabled but no MIG instances; skipping it", uuid)
        return None
    gpu["memory_mb"] = memory or sum(m["memory_mb"] for m in instances)
    gpu["mig"] = instances
    return gpu


def discover_gpus(nvml: ModuleType) -> list[dict[str, Any]]:
    """Describe every GPU NVML sees: UUID, name, memory, and its MIG instances if MIG is on.

    A GPU whose MIG mode is on but which has no MIG instances yet yields no units: it cannot
    run CUDA work until an operator creates instances, so it is logged and left out.  So is a
    GPU or MIG device NVML fails on (fail closed: fewer units, never more).  Raises
    :class:`NVMLUnavailable` with what to do when NVML cannot even count the GPUs.
    """
    errors = nvml_errors(nvml)
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError_Uninitialized:
        raise  # the caller's mistake: NVML must be initialised first
    except errors as e:
        raise NVMLUnavailable(f"NVML cannot count the GPUs ({explain(e)})") from None
    gpus = []
    for i in range(count):
        try:
            gpu = _describe_gpu(nvml, i)
        except errors as e:
            log.warning("GPU %d left out of the inventory: %s", i, explain(e))
            continue
        if gpu is not None:
            gpus.append(gpu)
    return gpus


def discover_or_none() -> list[dict[str, Any]] | None:
    """GPU descriptions from the real NVML, or None where NVML is absent or fails (logged)."""
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        log.info("No NVML on this host (%s); using the static GPU inventory", e)
        return None
    try:
        return discover_gpus(nvml)
    except NVMLUnavailable as e:
        log.warning("GPU discovery failed: %s. Using the static GPU inventory", e)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutdown failure is harmless
            pass


# ---- sampling for the node agent --------------------------------------------------------


@dataclass
class ProcessSample:
    """One compute process: its PID and GPU memory (None where NVML cannot tell); the GPU and
    compute instance NVML says it runs in (None: not MIG, or not given); ``mps_client`` when
    it came from the MPS client list (the MPS server is in the compute list)."""

    pid: int
    used_bytes: int | None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    mps_client: bool = False


@dataclass
class MigSample:
    uuid: str
    profile: str
    gpu_instance_id: int | None
    memory_total: int
    memory_used: int
    processes: list[ProcessSample] = field(default_factory=list)
    compute_instance_id: int | None = None


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


_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of a process outside MIG


def _instance(value: Any) -> int | None:
    return None if value is None or int(value) == _NO_INSTANCE else int(value)


def _listed(nvml: ModuleType, handle: Any, query: str, mps: bool) -> list[ProcessSample]:
    try:
        procs = getattr(nvml, query)(handle)
    except nvml.NVMLError as e:
        log.debug("no %s for a device: %s", query, e)
        return []
    found = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        found.append(
            ProcessSample(
                int(p.pid),
                None if used is None else int(used),
                _instance(getattr(p, "gpuInstanceId", None)),
                _instance(getattr(p, "computeInstanceId", None)),
                mps,
            )
        )
    return found


def _compute_listed(nvml: ModuleType, handle: Any) -> list[ProcessSample]:
    """The compute list.  nvidia-ml-py newer than the driver (13 on R470) raises
    ``NVMLLibraryMismatchError`` for the unversioned query; the ``_v2`` query (drivers since
    R450) gives the same fields then.  Where that fails too, the mismatch is raised: a missing
    process list must not read as an idle GPU."""
    try:
        return _listed(nvml, handle, "nvmlDeviceGetComputeRunningProcesses", False)
    except nvml_errors(nvml) as e:  # _listed handles NVMLError: this is the library mismatch
        try:
            nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)
        except (nvml.NVMLError, AttributeError):
            raise e from None
    if "v2" not in _WARNED:
        _WARNED.add("v2")
        log.warning(
            "nvidia-ml-py is newer than this driver's NVML library; reading processes with the "
            "driver's _v2 query. Install the nvidia-ml-py release of the driver's branch"
        )
    return _listed(nvml, handle, "nvmlDeviceGetComputeRunningProcesses_v2", False)


def _processes(nvml: ModuleType, handle: Any) -> list[ProcessSample]:
    """Compute processes, and MPS clients (``nvmlDeviceGetMPSComputeRunningProcesses``; where
    the library has no such query, none).  A PID in both lists is listed once, as a client."""
    try:
        clients = _listed(nvml, handle, "nvmlDeviceGetMPSComputeRunningProcesses", True)
    except Exception as e:  # noqa: BLE001 - optional (no MPS query, or a library mismatch): no clients
        log.debug("no MPS client list for a device: %s", e)
        clients = []
    seen = {p.pid for p in clients}
    return [p for p in _compute_listed(nvml, handle) if p.pid not in seen] + clients


def _utilization(nvml: ModuleType, handle: Any) -> tuple[int | None, int | None]:
    try:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    except nvml.NVMLError:  # NotSupported on MIG-enabled GPUs and MIG instances
        return None, None
    return int(rates.gpu), int(rates.memory)


#: MIG UUID -> profile name, so a name the driver does not give is worked out (and warned
#: about) once, not at every sample
_PROFILES: dict[str, str] = {}
_WARNED: set[str] = set()  # what was logged once: GPUs whose memory NVML refused, "v2"


def _sampled_profile(nvml: ModuleType, parent: Any, mig: Any) -> str:
    uuid = _text(nvml.nvmlDeviceGetUUID(mig))
    if uuid not in _PROFILES:
        _PROFILES[uuid] = mig_profile_name(nvml, parent, mig, None, None)
    return _PROFILES[uuid]


def _device_memory(nvml: ModuleType, handle: Any, uuid: str, migs: list[MigSample] | None) -> tuple[int, int]:
    """(total, used) bytes of a GPU.  A MIG-enabled GPU's memory NVML refuses to an unprivileged
    process (``NoPermission``): then the sums over its MIG instances, ``migs`` (None: MIG is off),
    logged once per GPU."""
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(memory.total), int(memory.used)
    except nvml.NVMLError_NoPermission:
        if migs is None:
            raise
    if uuid not in _WARNED:
        _WARNED.add(uuid)
        log.warning(
            "GPU %s has MIG on and NVML refuses its memory to this unprivileged process; reporting the "
            "sums over its MIG instances. Run the agent as root for the exact figures",
            uuid,
        )
    return sum(m.memory_total for m in migs), sum(m.memory_used for m in migs)


def _mig_samples(nvml: ModuleType, handle: Any) -> list[MigSample]:
    found = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue
        memory = nvml.nvmlDeviceGetMemoryInfo(mig)
        try:
            gi_id: int | None = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
        except nvml.NVMLError:
            gi_id = None
        try:
            ci_id: int | None = int(nvml.nvmlDeviceGetComputeInstanceId(mig))
        except (nvml.NVMLError, AttributeError):
            ci_id = None
        found.append(
            MigSample(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                profile=_sampled_profile(nvml, handle, mig),
                gpu_instance_id=gi_id,
                memory_total=int(memory.total),
                memory_used=int(memory.used),
                processes=_processes(nvml, mig),
                compute_instance_id=ci_id,
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
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        mig_enabled = mig_on(nvml, handle)
        migs = _mig_samples(nvml, handle) if mig_enabled else None
        total, used = _device_memory(nvml, handle, uuid, migs)
        util, mem_util = _utilization(nvml, handle)
        samples.append(
            DeviceSample(
                index=i,
                uuid=uuid,
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_total=total,
                memory_used=used,
                utilization=util,
                memory_utilization=mem_util,
                processes=[] if mig_enabled else _processes(nvml, handle),
                mig_enabled=mig_enabled,
                mig=migs or [],
            )
        )
    return samples
