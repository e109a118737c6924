"""The FAKE NVML keeps the real library's failure modes (tests/support/fakes/fake_nvml.py)."""

from __future__ import annotations

import json

import pynvml
import pytest
from fakes.fake_nvml import R470_MISSING, FakeGPU, FakeMIG, FakeNVML, FakeProcess

GPU = "GPU-5e1c0b7a-0000-4000-8000-000000000001"
MIG_A = "MIG-00000000-0000-4000-8000-000000000001"
MIG_B = "MIG-00000000-0000-4000-8000-000000000002"


def mig_gpu(**kw) -> FakeGPU:
    return FakeGPU(
        GPU,
        "NVIDIA H100 80GB HBM3",
        81559,
        mig_enabled=True,
        mig_instances=[
            None,
            FakeMIG(MIG_A, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3, 2, [FakeProcess(100, 5 << 20)]),
            FakeMIG(MIG_B, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1, 13, [FakeProcess(200, 7 << 20)]),
        ],
        **kw,
    )


def started(gpus: list[FakeGPU], **kw) -> FakeNVML:
    fake = FakeNVML(gpus, **kw)
    fake.nvmlInit()
    return fake


def test_errors_are_pynvml_classes():
    fake = started([mig_gpu()], privileged=False)
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        fake.nvmlDeviceGetMemoryInfo(parent)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert not issubclass(fake.NVMLLibraryMismatchError, pynvml.NVMLError)


def test_pid_namespace_translates_and_drops():
    gpu = FakeGPU(GPU, "NVIDIA L40S", 46068, processes=[FakeProcess(4242, 1), FakeProcess(5000, 2)])
    host = started([gpu])
    assert [p.pid for p in host.nvmlDeviceGetComputeRunningProcesses(host.nvmlDeviceGetHandleByIndex(0))] == [
        4242,
        5000,
    ]
    boxed = started([gpu], pid_view={4242: 7})
    procs = boxed.nvmlDeviceGetComputeRunningProcesses(boxed.nvmlDeviceGetHandleByIndex(0))
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(7, 1)]
    # memory still counts the process the caller cannot see
    assert boxed.nvmlDeviceGetMemoryInfo(boxed.nvmlDeviceGetHandleByIndex(0)).used == 3


def test_mig_parent_as_root_lists_every_instance_with_its_ids():
    fake = started([mig_gpu()])
    procs = fake.nvmlDeviceGetComputeRunningProcesses(fake.nvmlDeviceGetHandleByIndex(0))
    assert [(p.pid, p.gpuInstanceId, p.usedGpuMemory) for p in procs] == [
        (100, 2, 5 << 20),
        (200, 13, 7 << 20),
    ]
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(fake.nvmlDeviceGetHandleByIndex(0), 2)
    assert fake.nvmlDeviceGetGpuInstanceId(mig) == 13 and fake.nvmlDeviceGetComputeInstanceId(mig) == 0


def test_old_driver_lacks_functions():
    fake = started([mig_gpu()], missing_functions=R470_MISSING)
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        fake.nvmlDeviceGetComputeRunningProcesses(handle)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)


def test_reserved_memory_is_in_v1_used_only():
    gpu = FakeGPU(GPU, "NVIDIA L40S", 46068, processes=[FakeProcess(1, 1 << 20)], reserved_mb=500)
    fake = started([gpu])
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetMemoryInfo(handle).used == 501 << 20
    v2 = fake.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert (v2.used, v2.reserved) == (1 << 20, 500 << 20)


def test_legacy_uuids_and_profile_table():
    fake = started([mig_gpu(legacy_mig_uuids=True)])
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    assert fake.nvmlDeviceGetUUID(mig) == f"MIG-{GPU}/2/0"
    info = fake.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    assert (info.name, info.memorySizeMB, info.sliceCount) == (b"MIG 3g.40gb", 40192, 3)
    gi = fake.nvmlDeviceGetGpuInstanceById(parent, 2)
    assert fake.nvmlGpuInstanceGetInfo(gi).profileId == info.id


def test_the_file_fake_carries_the_failure_modes(tmp_path, monkeypatch):
    import fakes.fake_nvml_file as ff

    doc = {
        "privileged": False,
        "pid_view": {"4242": 7},
        "gpus": [
            {"uuid": GPU, "name": "NVIDIA L40S", "memory_mb": 46068, "reserved_mb": 300,
             "processes": [{"pid": 4242, "used_bytes": 1}, {"pid": 5000, "used_bytes": 2, "mps_client": True}]},
        ],
    }  # fmt: skip
    (tmp_path / "gpus.json").write_text(json.dumps(doc))
    monkeypatch.setenv("GPUHUB_FAKE_NVML_FILE", str(tmp_path / "gpus.json"))
    ff.nvmlInit()
    try:
        handle = ff.nvmlDeviceGetHandleByIndex(0)
        assert [p.pid for p in ff.nvmlDeviceGetComputeRunningProcesses(handle)] == [7]
        assert ff.nvmlDeviceGetMemoryInfo(handle).used == (300 << 20) + 3
        assert ff.NVMLError_NoPermission is pynvml.NVMLError_NoPermission
    finally:
        ff.nvmlShutdown()
