"""Which gpuhub server uses which GPU memory on this node (pure: no I/O).

Input: one NVML sample (:func:`gpuhub_spawner.node.nvml.sample_devices`: compute processes and
MPS clients), the container of each process (host PID -> container id, from :mod:`.cgroup`) and the gpuhub server containers on
this node with their labels.  Output: memory and process counts per (server, GPU or MIG
instance), the ``/api/activity`` document the idle culler reads, and dcgm-exporter's HPC
job-mapping files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.labels import ServerLabels
from gpuhub_spawner.node.nvml import DeviceSample, MigSample, ProcessSample


@dataclass(frozen=True)
class Server:
    """A gpuhub notebook server's container, from its labels."""

    container: str  # full container id
    user: str
    server: str = ""
    unit: str = ""
    pool: str = ""
    profile: str = ""

    @classmethod
    def from_labels(cls, container: str, labels: Mapping[str, str] | None) -> Server | None:
        """The server running as ``container``, or ``None`` when its labels name no user."""
        parsed = ServerLabels.from_labels(labels)
        if not parsed.is_server:
            return None  # not a gpuhub server
        return cls(container, parsed.user, parsed.server, parsed.unit, parsed.pool, parsed.profile)

    @property
    def mig(self) -> bool:
        return self.unit.startswith("MIG-")

    @property
    def whole_gpu(self) -> str | None:
        """The GPU UUID when the unit is a whole GPU (not MIG, not a shared replica slot)."""
        if self.unit.startswith("GPU-") and "/slot-" not in self.unit:
            return self.unit
        return None

    @property
    def device_uuid(self) -> str:
        """The GPU or MIG UUID the unit is on ('' for CPU-only servers)."""
        return self.unit.split("/slot-", 1)[0]

    @property
    def job(self) -> str:
        return self.user if not self.server else f"{self.user}/{self.server}"


@dataclass
class Usage:
    memory_used_bytes: int = 0
    processes: int = 0


#: (container id, GPU UUID, MIG UUID or '') -> usage
UsageKey = tuple[str, str, str]


@dataclass
class Attribution:
    servers: dict[str, Server]  # container id -> server
    usage: dict[UsageKey, Usage] = field(default_factory=dict)
    # per (GPU UUID, MIG UUID or ''): processes in no gpuhub server (the host, other containers)
    unattributed: dict[tuple[str, str], int] = field(default_factory=dict)


def _same(listed: int | None, instance: int | None) -> bool:
    return listed is None or instance is None or listed == instance


def instance_processes(mig: MigSample) -> list[ProcessSample]:
    """The processes that run in ``mig``, of those NVML listed on its handle.

    Queried with privileges, a MIG handle (like its parent's) may list the processes of every
    instance on the GPU, each with its ``gpuInstanceId``/``computeInstanceId``: keep those of
    this GPU instance and compute instance (a process NVML gives no id for is kept).
    """
    return [
        p
        for p in mig.processes
        if _same(p.gpu_instance_id, mig.gpu_instance_id) and _same(p.compute_instance_id, mig.compute_instance_id)
    ]


def _where(devices: Iterable[DeviceSample]) -> Iterable[tuple[str, str, list[ProcessSample]]]:
    for device in devices:
        if device.mig_enabled:
            for mig in device.mig:
                yield device.uuid, mig.uuid, instance_processes(mig)
        else:
            yield device.uuid, "", device.processes


def process_pids(devices: Iterable[DeviceSample]) -> set[int]:
    return {p.pid for _gpu, _mig, procs in _where(devices) for p in procs}


def attribute(
    devices: list[DeviceSample], containers: Mapping[int, str | None], servers: Mapping[str, Server]
) -> Attribution:
    """Sum each GPU process's memory into the server whose container it runs in.

    Under MPS the clients (``mps_client``, NVML's MPS list) are the users' processes and count
    for their containers; the MPS server, in the compute list, runs in the node's MPS daemon
    container and is unattributed, whoever's work it carries.
    """
    result = Attribution(servers=dict(servers))
    for gpu, mig, procs in _where(devices):
        for proc in procs:
            cid = containers.get(proc.pid)
            if cid is None or cid not in servers:
                key = (gpu, mig)
                result.unattributed[key] = result.unattributed.get(key, 0) + 1
                continue
            usage = result.usage.setdefault((cid, gpu, mig), Usage())
            usage.memory_used_bytes += proc.used_bytes or 0
            usage.processes += 1
    return result


def _utilization_of(server: Server, devices: Mapping[str, DeviceSample]) -> int | None:
    gpu = server.whole_gpu
    device = devices.get(gpu) if gpu else None
    return device.utilization if device is not None else None


def activity(node: str, now: float, devices: list[DeviceSample], attribution: Attribution) -> dict[str, Any]:
    """The ``GET /api/activity`` document (a contract with the idle culler: keep its shape).

    Every gpuhub server on the node is listed, with zeros when it runs no GPU process.
    ``utilization_percent`` is the GPU's utilization for whole-GPU units and null for MIG
    instances (NVML gives none) and shared replica slots (it cannot be split per user).
    """
    by_uuid = {d.uuid: d for d in devices}
    totals: dict[str, Usage] = {}
    for (cid, _gpu, _mig), usage in attribution.usage.items():
        total = totals.setdefault(cid, Usage())
        total.memory_used_bytes += usage.memory_used_bytes
        total.processes += usage.processes
    servers = []
    for cid, server in sorted(attribution.servers.items(), key=lambda kv: (kv[1].user, kv[1].server, kv[0])):
        total = totals.get(cid, Usage())
        servers.append(
            {
                "user": server.user,
                "server": server.server,
                "container": cid,
                "units": [server.unit] if server.unit else [],
                "memory_used_bytes": int(total.memory_used_bytes),
                "process_count": int(total.processes),
                "utilization_percent": _utilization_of(server, by_uuid),
                "mig": server.mig,
            }
        )
    return {"node": node, "time": now, "servers": servers}


def job_mapping(devices: list[DeviceSample], servers: Iterable[Server]) -> dict[str, list[str]]:
    """dcgm-exporter's HPC job mapping: file name -> job ids (one per line in the file).

    A file per GPU index (``0``), or per MIG instance as ``<GPU index>.<GPU instance id>``
    (``2.1``), listing the jobs (here: the users, ``user/server`` for named servers) that hold
    it.  Allocation comes from the unit label, so a holder with no process is listed too.
    """
    where: dict[str, str] = {}
    for device in devices:
        where[device.uuid] = str(device.index)
        for mig in device.mig:
            if mig.gpu_instance_id is not None:
                where[mig.uuid] = f"{device.index}.{mig.gpu_instance_id}"
    files: dict[str, set[str]] = {name: set() for name in where.values()}
    for server in servers:
        name = where.get(server.device_uuid)
        if name is not None:
            files[name].add(server.job)
    return {name: sorted(jobs) for name, jobs in files.items()}
