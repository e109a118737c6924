"""A FAKE ``pynvml`` module whose GPUs come from a JSON file, for whole processes under test.

Point ``GPUHUB_NVML_MODULE=fakes.fake_nvml_file`` (with ``tests`` on ``PYTHONPATH``) and
``GPUHUB_FAKE_NVML_FILE=/path/to/gpus.json`` at it.  The file is read at ``nvmlInit`` and read
again whenever it changed (checked at ``nvmlDeviceGetCount``, the first call of every sample),
so a test can change utilization or processes while the process under test keeps running.

File format::

    {"gpus": [
      {"uuid": "GPU-...", "name": "NVIDIA L40S", "memory_mb": 46068,
       "utilization": 37, "memory_utilization": 5,
       "processes": [{"pid": 4242, "used_bytes": 1073741824}]},
      {"uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
       "mig": [{"uuid": "MIG-...", "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "memory_mb": 9856,
                "slices": 1, "processes": [...]}]}
    ]}

Top-level ``privileged``, ``pid_view``, ``missing_functions`` and ``mig_handle_lists_all`` set
the caller's view (see :func:`caller_from_json`); a GPU may give ``reserved_mb``,
``legacy_mig_uuids`` and ``lost``, a MIG instance ``compute_instance_id``, ``ci_slices``,
``profile`` and ``reserved_mb``.  A missing or unreadable file behaves like a host without a driver (``nvmlInit`` fails).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pynvml

from fakes.fake_nvml import (  # noqa: F401 - re-exported as module attributes, like pynvml's
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    FakeGPU,
    FakeMIG,
    FakeNVML,
    FakeProcess,
    NVMLError,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLLibraryMismatchError,
)

NVML_DEVICE_MIG_DISABLE = FakeNVML.NVML_DEVICE_MIG_DISABLE
NVML_DEVICE_MIG_ENABLE = FakeNVML.NVML_DEVICE_MIG_ENABLE

_state: dict[str, Any] = {"fake": None, "mtime": None}


def _procs(entries: list[dict[str, Any]] | None) -> list[FakeProcess]:
    return [
        FakeProcess(int(p["pid"]), p.get("used_bytes", 0), bool(p.get("mps_client", False)))
        for p in entries or []
    ]


def gpus_from_json(data: dict[str, Any]) -> list[FakeGPU]:
    gpus = []
    for g in data.get("gpus", []):
        migs = [
            None
            if m is None
            else FakeMIG(
                m["uuid"],
                m.get("name", g.get("name", "NVIDIA GPU")),
                int(m.get("memory_mb", 0)),
                int(m.get("slices", 1)),
                m.get("gpu_instance_id"),
                _procs(m.get("processes")),
                compute_instance_id=int(m.get("compute_instance_id", 0)),
                profile=m.get("profile", ""),
                ci_slices=m.get("ci_slices"),
                reserved_mb=int(m.get("reserved_mb", 0)),
            )
            for m in g.get("mig") or []
        ]
        gpus.append(
            FakeGPU(
                g["uuid"],
                g.get("name", "NVIDIA GPU"),
                int(g.get("memory_mb", 0)),
                mig_enabled=bool(migs),
                mig_instances=migs,
                utilization=int(g.get("utilization", 0)),
                memory_utilization=int(g.get("memory_utilization", 0)),
                processes=_procs(g.get("processes")),
                reserved_mb=int(g.get("reserved_mb", 0)),
                legacy_mig_uuids=bool(g.get("legacy_mig_uuids", False)),
                lost=bool(g.get("lost", False)),
            )
        )
    return gpus


def caller_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """The caller's view: ``"privileged"``, ``"pid_view"`` ({host pid: pid seen}),
    ``"missing_functions"``, ``"mig_handle_lists_all"`` (see :class:`FakeNVML`)."""
    view = data.get("pid_view")
    return {
        "privileged": bool(data.get("privileged", True)),
        "pid_view": None if view is None else {int(k): int(v) for k, v in view.items()},
        "missing_functions": frozenset(data.get("missing_functions", ())),
        "mig_handle_lists_all": bool(data.get("mig_handle_lists_all", False)),
    }


def _path() -> str:
    return os.environ.get("GPUHUB_FAKE_NVML_FILE", "")


def _load(force: bool = False) -> FakeNVML:
    path = _path()
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED) from None
    fake = _state["fake"]
    if force or fake is None or mtime != _state["mtime"]:
        with open(path) as f:
            data = json.load(f)
        initialised = fake.initialised if fake is not None else False
        fake = FakeNVML(gpus_from_json(data), **caller_from_json(data))
        fake.initialised = initialised
        _state.update(fake=fake, mtime=mtime)
    return fake


def nvmlInit() -> None:
    _load(force=True).nvmlInit()


def nvmlShutdown() -> None:
    fake = _state["fake"]
    if fake is None:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    fake.nvmlShutdown()


def nvmlDeviceGetCount() -> int:
    fake = _state["fake"]
    if fake is None or not fake.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _load().nvmlDeviceGetCount()


def __getattr__(name: str) -> Any:
    # every other nvml* call goes to the fake built from the file's current contents
    if name.startswith("nvml"):
        fake = _state["fake"]
        if fake is None:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return getattr(fake, name)
    if name.startswith(("NVML_", "NVMLError_", "nvmlMemory_")):
        return getattr(pynvml, name)  # the real module's constants and error classes
    raise AttributeError(name)
