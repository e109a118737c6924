"""The node agent's ``/metrics`` and ``/api/activity`` under a real CUDA process: the process's
memory is counted, and attributed to the server whose container it runs in.

A lent GPU machine has no Docker engine, so the container is made of its two parts the agent
reads: a cgroup named as Docker's systemd driver names a container's (``docker-<id>.scope``,
which ``/proc/<pid>/cgroup`` then shows for the CUDA process) and that container's labels,
answered by :class:`LabelsOnlyEngine` in place of the engine's list and inspect calls.  NVML,
``/proc``, the cgroup and the agent's HTTP server are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
from gpucheck import cgroup2_root
from gpuprocs import find_process

from gpuhub_spawner.node.cgroup import ProcReader
from gpuhub_spawner.node.nvml import sample_devices

pytestmark = pytest.mark.gpu
USER = "gpucheck"
TOKEN = secrets.token_hex(20)


class LabelsOnlyEngine:
    """Stands in for the two ``docker.APIClient`` calls of the agent's container directory
    (list running containers, inspect one): the labels of the containers made here."""

    def __init__(self, labels: dict[str, dict[str, str]]):
        self.labels = labels

    def containers(self, filters):
        return [{"Id": cid, "Labels": labels} for cid, labels in self.labels.items()]

    def inspect_container(self, cid):
        if cid not in self.labels:
            raise LookupError(f"no such container: {cid}")
        return {"Config": {"Labels": self.labels[cid], "Env": []}}


@pytest.fixture
def container_cgroup():
    """A cgroup v2 leaf named like a Docker container's; removed afterwards."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 tree at /sys/fs/cgroup: a container's cgroup cannot be made here")
    cid = secrets.token_hex(32)
    slice_ = root / f"gpuhub-gpucheck-{os.getpid()}.slice"
    scope = slice_ / f"docker-{cid}.scope"
    try:
        scope.mkdir(parents=True)
    except OSError as e:
        pytest.skip(f"cannot make a cgroup under {root}: {e}")
    yield cid, scope
    for pid in (scope / "cgroup.procs").read_text().split():  # ours, if one outlived its test
        (root / "cgroup.procs").write_text(pid)
    for folder in (scope, slice_):
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)


async def fetch_both(agent) -> tuple[str, str, float]:
    """Serve the agent's real tornado application on a loopback port and GET /metrics (timed)
    and /api/activity from it over HTTP, with its token; the server is stopped afterwards."""
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from gpuhub_spawner.node.agent import make_web_app

    [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = HTTPServer(make_web_app(agent, TOKEN))
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = AsyncHTTPClient()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        t0 = time.perf_counter()
        text = (await client.fetch(base + "/metrics", headers=headers, request_timeout=60)).body.decode()
        seconds = time.perf_counter() - t0
        activity = (
            await client.fetch(base + "/api/activity", headers=headers, request_timeout=60)
        ).body.decode()
    finally:
        server.stop()
    return text, activity, seconds


def metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found, name: str, **labels: str) -> float | None:
    for have, v in found.get(name, []):
        if all(have.get(k) == w for k, w in labels.items()):
            return v
    return None


def scrape(machine, labels: dict[str, dict[str, str]], report, section: str):
    """Start the agent over ``labels``' containers, scrape both endpoints, stop it."""
    pytest.importorskip(
        "tornado", reason="the agent's dependencies are missing: run tests/gpu/run-on-device.sh"
    )
    pytest.importorskip(
        "traitlets", reason="the agent's dependencies are missing: run tests/gpu/run-on-device.sh"
    )
    from gpuhub_spawner.node.agent import NodeAgent, check_pid_view
    from gpuhub_spawner.node.containers import ContainerDirectory

    view = check_pid_view("/proc")
    directory = ContainerDirectory(LabelsOnlyEngine(labels), refresh=0.0)
    agent = NodeAgent("gpucheck", directory, ProcReader("/proc"), ttl=0.0, nvml=machine.nvml, pid_view=view)
    text, activity_text, scrape_seconds = asyncio.run(fetch_both(agent))
    found, activity = metrics(text), json.loads(activity_text)
    report.add(
        section, scrape_seconds=round(scrape_seconds, 4), host_pid_view=view.host, pid_view_reason=view.reason
    )
    assert value(found, "gpuhub_gpu_agent_nvml_up", node="gpucheck") == 1.0
    # the metric says what the agent's check found (0 would mean per-user series stay empty)
    assert value(found, "gpuhub_gpu_agent_host_pid_view", node="gpucheck") == (1.0 if view.host else 0.0)
    return found, activity


def test_agent_metrics_count_a_host_cuda_process(machine, cuda_process, report):
    child = cuda_process([1024])
    assert "error" not in child.doc, child.doc
    where = find_process(sample_devices(machine.nvml), child.pid)
    assert where, f"NVML lists no process {child.pid}"
    gpu, mig, _ = where
    found, activity = scrape(machine, {}, report, "agent_host_process")
    assert value(found, "gpuhub_gpu_processes", gpu_uuid=gpu, mig_uuid=mig) >= 1
    assert value(found, "gpuhub_gpu_unattributed_processes", gpu_uuid=gpu, mig_uuid=mig) >= 1
    used = value(found, "gpuhub_gpu_memory_used_bytes", gpu_uuid=gpu)
    assert used >= child.allocated_bytes(), (used, child.allocated_bytes())
    assert activity["servers"] == []


def test_agent_attributes_the_process_to_its_server(machine, container_cgroup, cuda_process, report):
    # the cgroup is asked for first, so it is removed after the process has ended
    cid, scope = container_cgroup
    child = cuda_process([1024])
    assert "error" not in child.doc, child.doc
    (scope / "cgroup.procs").write_text(str(child.pid))
    assert ProcReader("/proc").container_of(child.pid) == cid, Path(f"/proc/{child.pid}/cgroup").read_text()
    where = find_process(sample_devices(machine.nvml), child.pid)
    assert where, f"NVML lists no process {child.pid}"
    gpu, mig, sample = where
    unit = mig or gpu
    labels = {
        "org.gpuhub.user": USER,
        "org.gpuhub.unit": unit,
        "org.gpuhub.pool": "gpu",
        "org.gpuhub.profile": "check",
    }
    found, activity = scrape(machine, {cid: labels}, report, "agent_attribution")
    key = {"user": USER, "gpu_uuid": gpu, "mig_uuid": mig}
    memory = value(found, "gpuhub_gpu_user_memory_used_bytes", **key)
    report.add(
        "agent_attribution",
        allocated_bytes=child.allocated_bytes(),
        nvml_process_bytes=sample.used_bytes,
        attributed_bytes=memory,
        backend=child.doc["backend"],
    )
    assert value(found, "gpuhub_gpu_user_processes", **key) == 1.0
    assert memory is not None and memory >= child.allocated_bytes(), (memory, child.allocated_bytes())
    [server] = activity["servers"]
    assert server["user"] == USER and server["container"] == cid and server["units"] == [unit]
    assert server["process_count"] == 1 and server["memory_used_bytes"] >= child.allocated_bytes()
