"""GPU discovery against a FAKE NVML (no driver here), and once against the real one on a GPU host."""

from __future__ import annotations

import logging

import pynvml
import pytest
from fakes.fake_nvml import FakeGPU, FakeMIG, FakeNVML

from gpuhub_spawner.core import inventory as inv
from gpuhub_spawner.node.nvml import NVMLUnavailable, discover_gpus, discover_or_none, load_nvml

H100 = "GPU-5e1c0b7a-0000-4000-8000-000000000001"
A100 = "GPU-a100a100-0000-4000-8000-000000000002"
EMPTY_MIG = "GPU-e0e0e0e0-0000-4000-8000-000000000003"
L40 = "GPU-40404040-0000-4000-8000-000000000004"
RTX = "GPU-52545800-0000-4000-8000-000000000005"


def mig(n: int) -> str:
    return f"MIG-00000000-0000-4000-8000-{n:012d}"


def fleet() -> list[FakeGPU]:
    return [
        # recent driver: the profile is in the MIG device name; slot 1 is empty
        FakeGPU(
            H100,
            "NVIDIA H100 80GB HBM3",
            81559,
            mig_enabled=True,
            mig_instances=[
                FakeMIG(mig(1), "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1),
                None,
                FakeMIG(mig(2), "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1),
                FakeMIG(mig(3), "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3),
            ],
        ),
        # older driver: no "MIG <profile>" in the name, and bytes from pynvml
        FakeGPU(
            A100,
            "A100-SXM4-40GB",
            40536,
            mig_enabled=True,
            mig_instances=[
                FakeMIG(mig(4), "A100-SXM4-40GB", 4864, 1),
                FakeMIG(mig(5), "A100-SXM4-40GB", 19968, 3),
            ],
            as_bytes=True,
        ),
        FakeGPU(EMPTY_MIG, "NVIDIA A30", 24576, mig_enabled=True, mig_instances=[None, None]),
        FakeGPU(L40, "NVIDIA L40S", 46068),
        FakeGPU(RTX, "NVIDIA GeForce RTX 4090", 24564, mig_supported=False),
    ]


@pytest.fixture
def nvml() -> FakeNVML:
    fake = FakeNVML(fleet())
    fake.nvmlInit()
    return fake


def test_discover_describes_every_usable_gpu(nvml: FakeNVML, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="gpuhub_spawner.node.nvml"):
        gpus = discover_gpus(nvml)

    assert [g["uuid"] for g in gpus] == [H100, A100, L40, RTX]
    assert [g["index"] for g in gpus] == [0, 1, 3, 4]
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[0]["memory_mb"] == 81559
    assert gpus[0]["mig"] == [
        {"uuid": mig(1), "profile": "1g.10gb", "memory_mb": 9856},
        {"uuid": mig(2), "profile": "1g.10gb", "memory_mb": 9856},
        {"uuid": mig(3), "profile": "3g.40gb", "memory_mb": 40192},
    ]
    # bytes decoded; profiles from the driver's GPU-instance profile table (no name in the device)
    assert gpus[1]["name"] == "A100-SXM4-40GB"
    assert gpus[1]["mig"] == [
        {"uuid": mig(4), "profile": "1g.5gb", "memory_mb": 4864},
        {"uuid": mig(5), "profile": "3g.20gb", "memory_mb": 19968},
    ]
    assert "mig" not in gpus[2] and "mig" not in gpus[3]
    assert gpus[3]["name"] == "NVIDIA GeForce RTX 4090"
    assert EMPTY_MIG in caplog.text and "no MIG instances" in caplog.text


def test_discovered_gpus_become_units_and_pools(nvml: FakeNVML):
    units = inv.units_from_gpus(discover_gpus(nvml), default_replicas=2)
    inventory = inv.Inventory(tuple(units))

    assert inventory.pool_names() == ["mig-1g.10gb", "mig-1g.5gb", "mig-3g.20gb", "mig-3g.40gb", "shared"]
    assert [u.id for u in inventory.pools["mig-1g.10gb"]] == [mig(1), mig(2)]
    assert {u.gpu_uuid for u in inventory.pools["mig-1g.10gb"]} == {H100}
    # replicas apply to the whole GPUs only, never to MIG-enabled ones
    assert [u.id for u in inventory.pools["shared"]] == [
        f"{L40}/slot-0",
        f"{L40}/slot-1",
        f"{RTX}/slot-0",
        f"{RTX}/slot-1",
    ]
    assert inventory.by_id[f"{L40}/slot-1"].memory_mb == 46068 // 2
    assert EMPTY_MIG not in {u.gpu_uuid for u in units}
    assert len(units) == 9


def test_no_gpus_means_no_units():
    fake = FakeNVML([])
    fake.nvmlInit()
    assert discover_gpus(fake) == []
    assert inv.default_profiles(inv.Inventory(())) == [
        inv.Profile(**{**inv.CPU_PROFILE.__dict__, "default": True})
    ]


def test_fake_refuses_calls_before_init():
    # discover_gpus relies on its caller to initialise NVML, as the real library requires
    with pytest.raises(FakeNVML.NVMLError):
        discover_gpus(FakeNVML(fleet()))


def test_load_nvml_reports_an_init_failure(monkeypatch: pytest.MonkeyPatch):
    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    with pytest.raises(NVMLUnavailable, match="NVML did not initialise: Driver Not Loaded"):
        load_nvml()


def test_discover_or_none_is_none_without_nvml(monkeypatch: pytest.MonkeyPatch):
    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert discover_or_none() is None


@pytest.mark.gpu
def test_real_nvml_gives_full_uuids():
    try:
        load_nvml().nvmlShutdown()
    except NVMLUnavailable as e:
        pytest.skip(f"no NVIDIA driver/NVML on this machine: {e}")
    gpus = discover_or_none()
    assert gpus, "NVML initialised but reported no usable GPU"
    units = inv.units_from_gpus(gpus)
    assert units
    for unit in units:
        prefix = "MIG-" if unit.kind == inv.KIND_MIG else "GPU-"
        assert unit.device_id.startswith(prefix) and len(unit.device_id) > len(prefix) + 8, unit
        assert unit.gpu_uuid.startswith("GPU-"), unit
