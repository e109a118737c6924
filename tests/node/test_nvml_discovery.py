"""NVML discovery and sampling against the FAKE NVML's real failure modes (no driver here).

Each test here failed before the fix it names: profile names rounded from memory ("3g.39gb"),
``-me``/``1c.`` profiles refused or mis-named, ``NoPermission`` on a MIG parent stopping the
hub, NVML errors escaping as tracebacks.
"""

from __future__ import annotations

import json
import logging

import pynvml
import pytest
from fakes.fake_nvml import R470_MISSING, FakeGIProfile, FakeGPU, FakeMIG, FakeNVML, FakeProcess

from gpuhub_spawner import cli
from gpuhub_spawner.core import cluster
from gpuhub_spawner.core import inventory as inv
from gpuhub_spawner.node import nvml as nvml_mod
from gpuhub_spawner.node.nvml import NVMLUnavailable, discover_gpus, discover_or_none, sample_devices

H100 = "GPU-5e1c0b7a-0000-4000-8000-000000000001"
L40 = "GPU-40404040-0000-4000-8000-000000000004"
NAME = "NVIDIA H100 80GB HBM3"
LOGGER = "gpuhub_spawner.node.nvml"


def mig(n: int) -> str:
    return f"MIG-00000000-0000-4000-8000-{n:012d}"


def old_driver_h100(**kw) -> FakeGPU:
    """MIG device names without the profile, as drivers before R470 give them."""
    return FakeGPU(
        H100,
        NAME,
        81559,
        mig_enabled=True,
        mig_instances=[
            FakeMIG(mig(1), NAME, 40192, 3, 2, [FakeProcess(11, 1 << 20)]),
            None,
            FakeMIG(mig(2), NAME, 9856, 1, 9, [FakeProcess(12, 2 << 20)], profile="1g.10gb+me"),
            FakeMIG(mig(3), NAME, 80384 // 2, 3, 1, compute_instance_id=0, ci_slices=1, profile="1c.3g.40gb"),
        ],
        **kw,
    )


def started(gpus: list[FakeGPU], **kw) -> FakeNVML:
    fake = FakeNVML(gpus, **kw)
    fake.nvmlInit()
    return fake


def profiles(gpus: list[dict]) -> list[str]:
    return [m["profile"] for g in gpus for m in g.get("mig", [])]


def test_large_profiles_are_named_from_the_profile_table_not_rounded():
    # 40192 MiB is 39.25 GiB: the old rounding named it "3g.39gb"
    gpus = discover_gpus(started([old_driver_h100()]))
    assert profiles(gpus) == ["3g.40gb", "1g.10gb+me", "1c.3g.40gb"]


def test_without_privileges_media_engine_variants_are_named_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gpus = discover_gpus(started([old_driver_h100()], privileged=False))
    # the GPU instance cannot be looked up: 1g.10gb and 1g.10gb+me look alike, and the log says so
    assert profiles(gpus) == ["3g.40gb", "1g.10gb", "1c.3g.40gb"]
    assert "1g.10gb, 1g.10gb+me" in caplog.text and mig(2) in caplog.text


def test_a_profile_derived_from_memory_is_right_for_large_profiles_and_logged(caplog):
    gpu = old_driver_h100(gi_profiles=[])  # a driver without profile info v2
    gpu.mig_instances = gpu.mig_instances[:1]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gpus = discover_gpus(started([gpu]))
    assert profiles(gpus) == ["3g.40gb"]
    assert "derived '3g.40gb'" in caplog.text and mig(1) in caplog.text


@pytest.mark.parametrize(
    "device_name, profile",
    [
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", "1g.10gb+me"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb-me", "1g.10gb-me"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.20gb", "1g.20gb"),
        ("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", "1c.3g.40gb"),
        ("NVIDIA H100 80GB HBM3 MIG 7g.80gb", "7g.80gb"),
    ],
    ids=["plus-me", "minus-me", "1g.20gb", "compute-instance", "whole"],
)
def test_named_profiles_become_units_and_swarm_kinds_that_read_back(device_name, profile):
    gpu = FakeGPU(H100, NAME, 81559, mig_enabled=True, mig_instances=[FakeMIG(mig(1), device_name, 9856, 1)])
    gpus = discover_gpus(started([gpu]))
    assert profiles(gpus) == [profile]
    (unit,) = inv.units_from_gpus(gpus)
    assert unit.pool == f"mig-{profile}"
    resources, _labels = cluster.node_resources([unit])
    kind = resources[0].split("=")[0]
    assert cluster.pool_of_kind(kind) == unit.pool
    assert cluster.kind_of_pool(unit.pool) == kind


def test_compute_instance_profiles_are_not_shown_as_isolated():
    gpus = discover_gpus(started([old_driver_h100()]))
    inventory = inv.Inventory(tuple(inv.units_from_gpus(gpus)))
    by_pool = {p.pool: p for p in inv.default_profiles(inventory)}
    assert "NOT isolated" in by_pool["mig-1c.3g.40gb"].description
    assert by_pool["mig-3g.40gb"].description.startswith("An isolated MIG slice")
    assert not inventory.pools["mig-1c.3g.40gb"][0].memory_isolated
    assert "memory shared" in inventory.pools["mig-1c.3g.40gb"][0].describe()


def test_no_permission_on_a_mig_parent_falls_back_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gpus = discover_gpus(started([old_driver_h100()], privileged=False))
    assert gpus[0]["memory_mb"] == 80384  # the 7g.80gb profile's memory
    assert "refuses its memory" in caplog.text and H100 in caplog.text


def test_no_permission_on_a_mig_parent_keeps_the_agent_sampling(caplog):
    empty = FakeGPU(L40, "NVIDIA A30", 24576, mig_enabled=True, mig_instances=[None])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        device, no_instances = sample_devices(started([old_driver_h100(), empty], privileged=False))
    assert (no_instances.memory_total, no_instances.mig) == (0, [])
    assert device.memory_total == sum(m.memory_total for m in device.mig)
    assert device.memory_used == sum(m.memory_used for m in device.mig) == 3 << 20
    assert [m.profile for m in device.mig] == ["3g.40gb", "1g.10gb", "1c.3g.40gb"]


def test_a_lost_gpu_is_left_out_with_a_clear_message(caplog):
    lost = FakeGPU(H100, NAME, 81559, lost=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gpus = discover_gpus(started([lost, FakeGPU(L40, "NVIDIA L40S", 46068)]))
    assert [g["uuid"] for g in gpus] == [L40]
    assert "NVMLError_GpuIsLost" in caplog.text and "dmesg" in caplog.text
    assert "Traceback" not in caplog.text


def test_nvml_that_cannot_count_fails_closed_with_what_to_do(caplog):
    broken = started([FakeGPU(L40, "NVIDIA L40S", 46068)], missing_functions={"nvmlDeviceGetCount_v2"})
    with pytest.raises(NVMLUnavailable, match="FunctionNotFound.*upgrade the driver"):
        discover_gpus(broken)


def test_library_mismatch_is_explained():
    text = nvml_mod.explain(pynvml.NVMLLibraryMismatchError("Unversioned function called"))
    assert "newer than this driver" in text
    assert pynvml.NVMLLibraryMismatchError in nvml_mod.nvml_errors(pynvml)


def write_fleet(path, gpus: list[dict], **caller) -> None:
    path.write_text(json.dumps({"gpus": gpus, **caller}))


def test_hub_and_cli_start_on_an_unprivileged_mig_node(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "gpus.json"
    h100 = {
        "uuid": H100,
        "name": NAME,
        "memory_mb": 81559,
        "mig": [{"uuid": mig(1), "name": NAME, "memory_mb": 40192, "slices": 3}],
    }
    write_fleet(doc, [h100], privileged=False)
    monkeypatch.setenv("GPUHUB_NVML_MODULE", "fakes.fake_nvml_file")
    monkeypatch.setenv("GPUHUB_FAKE_NVML_FILE", str(doc))
    gpus = discover_or_none()
    assert gpus is not None and profiles(gpus) == ["3g.40gb"]
    assert cli.main(["inventory"]) == 0
    assert json.loads(capsys.readouterr().out)["pools"] == {"mig-3g.40gb": 1}


def test_cli_reports_broken_nvml_without_a_traceback(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "gpus.json"
    write_fleet(
        doc,
        [{"uuid": L40, "name": "NVIDIA L40S", "memory_mb": 46068}],
        missing_functions=["nvmlDeviceGetCount_v2"],
    )
    monkeypatch.setenv("GPUHUB_NVML_MODULE", "fakes.fake_nvml_file")
    monkeypatch.setenv("GPUHUB_FAKE_NVML_FILE", str(doc))
    assert discover_or_none() is None  # the hub goes on with its static inventory, logged
    assert cli.main(["inventory"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuhub: ") and "FunctionNotFound" in err and "Traceback" not in err


def test_legacy_mig_uuids_are_passed_on_verbatim():
    gpus = discover_gpus(started([old_driver_h100(legacy_mig_uuids=True)]))
    uuids = [m["uuid"] for m in gpus[0]["mig"]]
    assert uuids == [f"MIG-{H100}/2/0", f"MIG-{H100}/9/0", f"MIG-{H100}/1/0"]
    units = inv.units_from_gpus(gpus)
    assert [u.device_id for u in units] == uuids and {u.gpu_uuid for u in units} == {H100}
    resources, _ = cluster.node_resources(units)
    assert f"NVIDIA_MIG_3G_40GB={uuids[0]}" in resources


def test_a_custom_profile_table_is_read_from_the_driver():
    table = [FakeGIProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 1, 16896, "MIG 1g.18gb")]
    gpu = FakeGPU(H100, "NVIDIA H200", 143771, mig_enabled=True, gi_profiles=table,
                  mig_instances=[FakeMIG(mig(1), "NVIDIA H200", 16896, 1)])  # fmt: skip
    assert profiles(discover_gpus(started([gpu]))) == ["1g.18gb"]


def test_sampling_on_an_r470_driver_reads_processes_with_the_v2_query():
    gpu = FakeGPU(L40, "NVIDIA L40S", 46068, processes=[FakeProcess(4242, 1 << 20)])
    (device,) = sample_devices(started([gpu], missing_functions=R470_MISSING))
    assert [(p.pid, p.used_bytes) for p in device.processes] == [(4242, 1 << 20)]


def test_sampling_without_any_process_query_fails_closed():
    gpu = FakeGPU(L40, "NVIDIA L40S", 46068, processes=[FakeProcess(4242, 1 << 20)])
    missing = R470_MISSING | {"nvmlDeviceGetComputeRunningProcesses_v2"}
    with pytest.raises(pynvml.NVMLLibraryMismatchError):  # not an empty list that reads as idle
        sample_devices(started([gpu], missing_functions=missing))
