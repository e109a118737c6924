"""gpuhub's NVML discovery on a real driver agrees with ``nvidia-smi -L`` (GPUs, names, MIG
instances).  MIG is listed only where it is already on: nothing here changes a GPU setting."""

from __future__ import annotations

import time

import pytest

from gpuhub_spawner.node.nvml import discover_gpus

pytestmark = pytest.mark.gpu


def _memory_by_uuid(machine) -> dict[str, int]:
    text = machine.smi_run("--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits")
    found = {}
    for line in text.splitlines():
        uuid, _, mib = line.partition(",")
        if mib.strip().isdigit():
            found[uuid.strip()] = int(mib)
    return found


def _mig_on(machine, index: int) -> bool:
    nvml = machine.nvml
    try:
        return (
            nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(index))[0]
            == nvml.NVML_DEVICE_MIG_ENABLE
        )
    except nvml.NVMLError:
        return False


def test_discovery_matches_nvidia_smi(machine, report):
    if not machine.smi:
        pytest.skip("nvidia-smi is not installed on this machine")
    t0 = time.perf_counter()
    gpus = discover_gpus(machine.nvml)
    seconds = time.perf_counter() - t0
    listed = {g.uuid: g for g in machine.smi_list}
    report.add(
        "discovery",
        seconds=round(seconds, 4),
        gpus=[
            {k: g[k] for k in ("index", "uuid", "name", "memory_mb")} | {"mig": len(g.get("mig", []))}
            for g in gpus
        ],
    )
    assert listed, "nvidia-smi -L listed no GPU although NVML initialised"
    found = {g["uuid"]: g for g in gpus}
    assert set(found) <= set(listed), f"NVML found GPUs nvidia-smi does not list: {set(found) - set(listed)}"
    for uuid, smi in listed.items():
        if uuid not in found:  # left out on purpose: MIG on and no instance yet
            assert _mig_on(machine, smi.index) and not smi.mig, (
                f"{uuid} ({smi.name}) is missing from discovery"
            )
            continue
        assert found[uuid]["name"] == smi.name
        assert found[uuid]["index"] == smi.index
    memory = _memory_by_uuid(machine)
    for uuid, gpu in found.items():
        assert abs(gpu["memory_mb"] - memory[uuid]) <= 1, (uuid, gpu["memory_mb"], memory[uuid])


def test_mig_instances_match_nvidia_smi(machine, report):
    """Only where MIG is on already (this check never turns it on)."""
    with_mig = [g for g in machine.smi_list if g.mig]
    if not with_mig:
        pytest.skip("MIG is off on every GPU here (or nvidia-smi is absent); this check never turns it on")
    gpus = {g["uuid"]: g for g in discover_gpus(machine.nvml)}
    seen = []
    for smi in with_mig:
        instances = {m["uuid"]: m for m in gpus[smi.uuid]["mig"]}
        assert set(instances) == {m.uuid for m in smi.mig}
        for m in smi.mig:
            assert instances[m.uuid]["profile"] == m.profile, (m, instances[m.uuid])
            seen.append(
                {
                    "gpu": smi.uuid,
                    "uuid": m.uuid,
                    "profile": m.profile,
                    "memory_mb": instances[m.uuid]["memory_mb"],
                }
            )
    report.add("mig", instances=seen)
