"""The node agent's ``/metrics``: every ``gpuhub_gpu_…`` family, built from one sample at
scrape time (a custom Prometheus collector over :class:`gpuhub_spawner.node.agent.NodeAgent`).

MIG series carry ``gpu_instance_id`` and ``compute_instance_id`` beside ``mig_uuid``, so they
join dcgm-exporter's series, which name a MIG instance by its parent's ``UUID`` and
``GPU_I_ID`` (README, "Metrics").  Both are empty on whole GPUs.  A series NVML could not be
read for is absent, never a guess: ``gpuhub_gpu_agent_nvml_error{reason}`` says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuhub_spawner.node.attribution import instance_processes
from gpuhub_spawner.node.nvml import MigSample

if TYPE_CHECKING:
    from gpuhub_spawner.node.agent import NodeAgent, Snapshot


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _instance_ids(mig: MigSample | None) -> list[str]:
    """``[gpu_instance_id, compute_instance_id]`` of a MIG instance ('' for a whole GPU)."""
    if mig is None:
        return ["", ""]
    return [_id(mig.gpu_instance_id), _id(mig.compute_instance_id)]


class AgentCollector(Collector):
    """Builds every ``gpuhub_gpu_…`` family from one :class:`Snapshot` at scrape time."""

    def __init__(self, agent: NodeAgent):
        self.agent = agent

    def collect(self):
        snap = self.agent.snapshot()
        node = self.agent.node
        migs = {m.uuid: m for d in snap.devices for m in d.mig}
        yield from self._agent(snap, node)
        yield from self._gpus(snap, node)
        yield from self._instances(snap, node, migs)
        yield from self._per_user(snap, node, migs)

    def _agent(self, snap: Snapshot, node: str):
        g = GaugeMetricFamily
        up = g("gpuhub_gpu_agent_nvml_up", "1 if NVML answered in the last sample, else 0", labels=["node"])
        up.add_metric([node], 1.0 if snap.nvml_up else 0.0)
        took = g("gpuhub_gpu_agent_sample_duration_seconds", "Time taken by the last sample", labels=["node"])
        took.add_metric([node], snap.duration)
        error = g(
            "gpuhub_gpu_agent_nvml_error",
            "1 while the last NVML read failed, by reason (library-mismatch, function-not-found, "
            "no-permission, driver-mismatch, gpu-lost, nvml-error, unexpected); the series it could not "
            "read are absent",
            labels=["node", "reason"],
        )
        if snap.nvml_error:
            error.add_metric([node, snap.nvml_error], 1.0)
        errors = CounterMetricFamily(
            "gpuhub_gpu_agent_nvml_errors",
            "NVML reads that failed since the agent started, by reason",
            labels=["node", "reason"],
        )
        for reason, count in sorted(self.agent.nvml_errors.items()):
            errors.add_metric([node, reason], float(count))
        yield from (up, took, error, errors)
        view = self.agent.pid_view
        if view is not None:
            host = g(
                "gpuhub_gpu_agent_host_pid_view",
                "1 if the agent sees the host's PIDs; 0: per-user series stay empty (NVML hides other "
                "namespaces' processes): run it with `gpuhub node agent install`",
                labels=["node"],
            )
            host.add_metric([node], 1.0 if view.host else 0.0)
            yield host

    def _gpus(self, snap: Snapshot, node: str):
        """Whole GPUs: what they are, their memory and utilization."""
        g = GaugeMetricFamily
        info = g(
            "gpuhub_gpu_info",
            "A GPU on this node (value 1); mig_mode is 1 when MIG is on",
            labels=["node", "gpu_uuid", "index", "name", "mig_mode"],
        )
        total = g("gpuhub_gpu_memory_total_bytes", "Memory of the whole GPU", labels=["node", "gpu_uuid"])
        used = g(
            "gpuhub_gpu_memory_used_bytes", "Memory in use on the whole GPU", labels=["node", "gpu_uuid"]
        )
        util = g(
            "gpuhub_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran (NVML); absent for "
            "MIG-enabled GPUs, where NVML gives no utilization",
            labels=["node", "gpu_uuid"],
        )
        mem_util = g(
            "gpuhub_gpu_memory_utilization_ratio",
            "Fraction of the last sample period in which GPU memory was read or written (NVML); "
            "absent for MIG-enabled GPUs",
            labels=["node", "gpu_uuid"],
        )
        for d in snap.devices:
            info.add_metric([node, d.uuid, str(d.index), d.name, "1" if d.mig_enabled else "0"], 1.0)
            total.add_metric([node, d.uuid], float(d.memory_total))
            if d.memory_used is not None:
                used.add_metric([node, d.uuid], float(d.memory_used))
            if d.utilization is not None:
                util.add_metric([node, d.uuid], d.utilization / 100.0)
            if d.memory_utilization is not None:
                mem_util.add_metric([node, d.uuid], d.memory_utilization / 100.0)
        yield from (info, total, used, util, mem_util)

    def _instances(self, snap: Snapshot, node: str, migs: dict[str, MigSample]):
        """MIG instances' memory, and compute processes per GPU or MIG instance."""
        g = GaugeMetricFamily
        mig_keys = ["node", "gpu_uuid", "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id"]
        mig_total = g(
            "gpuhub_gpu_mig_memory_total_bytes",
            "Memory of a MIG instance (NVML gives no utilization per MIG instance)",
            labels=mig_keys,
        )
        mig_used = g("gpuhub_gpu_mig_memory_used_bytes", "Memory in use on a MIG instance", labels=mig_keys)
        keys = ["node", "gpu_uuid", "mig_uuid", "gpu_instance_id", "compute_instance_id"]
        procs = g(
            "gpuhub_gpu_processes",
            "Compute processes on a GPU or MIG instance (mig_uuid and instance ids empty for a whole GPU)",
            labels=keys,
        )
        other = g(
            "gpuhub_gpu_unattributed_processes",
            "Compute processes on a GPU or MIG instance that are in no gpuhub server",
            labels=keys,
        )
        for d in snap.devices:
            if not d.mig_enabled:
                procs.add_metric([node, d.uuid, "", "", ""], float(len(d.processes)))
            for m in d.mig:
                ids = _instance_ids(m)
                mig_total.add_metric([node, d.uuid, m.uuid, m.profile, *ids], float(m.memory_total))
                if m.memory_used is not None:
                    mig_used.add_metric([node, d.uuid, m.uuid, m.profile, *ids], float(m.memory_used))
                procs.add_metric([node, d.uuid, m.uuid, *ids], float(len(instance_processes(m))))
        for (gpu, mig), count in snap.attribution.unattributed.items():
            other.add_metric([node, gpu, mig, *_instance_ids(migs.get(mig))], float(count))
        yield from (mig_total, mig_used, procs, other)

    def _per_user(self, snap: Snapshot, node: str, migs: dict[str, MigSample]):
        g = GaugeMetricFamily
        server_info = g(
            "gpuhub_gpu_server_info",
            "A gpuhub notebook server on this node (value 1), with its unit, pool and profile",
            labels=["node", "user", "server", "container", "unit", "pool", "profile"],
        )
        keys = ["node", "user", "server", "unit", "gpu_uuid", "mig_uuid", "gpu_instance_id", "compute_instance_id"]
        mem = g(
            "gpuhub_gpu_user_memory_used_bytes", "GPU memory used by a user's server's processes", labels=keys
        )
        count = g(
            "gpuhub_gpu_user_processes",
            "Compute processes of a user's server on a GPU or MIG instance",
            labels=keys,
        )
        util = g(
            "gpuhub_gpu_user_utilization_ratio",
            "Utilization of the whole GPU a user's server holds; absent for MIG instances (NVML "
            "gives none) and shared replica slots (it cannot be split per user)",
            labels=["node", "user", "server", "unit", "gpu_uuid"],
        )
        by_uuid = {d.uuid: d for d in snap.devices}
        servers = snap.attribution.servers
        for cid, s in servers.items():
            server_info.add_metric([node, s.user, s.server, cid[:12], s.unit, s.pool, s.profile], 1.0)
            gpu = s.whole_gpu
            device = by_uuid.get(gpu) if gpu else None
            if device is not None and device.utilization is not None:
                util.add_metric([node, s.user, s.server, s.unit, gpu], device.utilization / 100.0)
        for (cid, gpu, mig), usage in snap.attribution.usage.items():
            s = servers[cid]
            labels = [node, s.user, s.server, s.unit, gpu, mig, *_instance_ids(migs.get(mig))]
            mem.add_metric(labels, float(usage.memory_used_bytes))
            count.add_metric(labels, float(usage.processes))
        yield from (server_info, mem, count, util)
