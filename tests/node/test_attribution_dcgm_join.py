"""dcgm-exporter's series joined to gpuhub's users in a real Prometheus (Debian's package) with
the committed recording rules (deploy/prometheus/gpuhub-dcgm.rules.yml): the node agent's real
/metrics over a FAKE NVML, and a dcgm-exporter stand-in serving the text dcgm-exporter serves
for a MIG-enabled H100 and a whole GPU (labels ``UUID``, ``GPU_I_ID``, ``GPU_I_PROFILE``).
"""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fakes.fake_nvml import FakeGPU, FakeMIG, FakeNVML, FakeProcess
from needs import unavailable
from promserver import PROMETHEUS, PrometheusServer
from test_attribution_agent import TOKEN, Listing, labels, proc_tree

from gpuhub_spawner.node.agent import NodeAgent
from gpuhub_spawner.node.cgroup import ProcReader
from gpuhub_spawner.node.containers import ContainerDirectory

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "gpuhub-dcgm.rules.yml"
H100 = "GPU-11111111-0000-4000-8000-000000000001"
WHOLE = "GPU-22222222-0000-4000-8000-000000000002"
SHARED = "GPU-33333333-0000-4000-8000-000000000003"
MIG_13 = "MIG-11111111-0000-4000-8000-00000000000d"
MIG_2 = "MIG-11111111-0000-4000-8000-000000000002"
MIG_5 = "MIG-11111111-0000-4000-8000-000000000005"
#: the joins the rules file documents (its header): they must work as written
MIG_JOIN = "DCGM_FI_PROF_GR_ENGINE_ACTIVE * on (UUID, GPU_I_ID) group_left (user, server) gpuhub:mig_instance_user:info"
GPU_JOIN = "DCGM_FI_DEV_GPU_UTIL * on (UUID) group_left (user, server) gpuhub:gpu_user:info"


def dcgm_text() -> str:
    """What dcgm-exporter serves on this node: per GPU instance on the MIG GPU, per GPU otherwise."""
    common = 'pci_bus_id="00000000:17:00.0",device="nvidia{gpu}",Hostname="gpu-1",DCGM_FI_DRIVER_VERSION="550.54.15"'
    lines = ["# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    for gi, profile, value in (("13", "1g.10gb", 0.42), ("2", "3g.40gb", 0.05), ("5", "2g.20gb", 0.0)):
        lines.append(
            f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{H100}",modelName="NVIDIA H100 80GB HBM3",'
            f'GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}",{common.format(gpu=0)}}} {value}'
        )
    for index, uuid, util in ((1, WHOLE, 70), (2, SHARED, 55)):
        lines.append(f'DCGM_FI_DEV_GPU_UTIL{{gpu="{index}",UUID="{uuid}",modelName="NVIDIA L40S",'
                     f'{common.format(gpu=index)}}} {util}')
        lines.append(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="{index}",UUID="{uuid}",modelName="NVIDIA L40S",'
                     f'{common.format(gpu=index)}}} {util / 100}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def dcgm_exporter():
    """A stand-in serving dcgm_text() at /metrics on a loopback port."""
    body = dcgm_text().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def agent(tmp_path) -> NodeAgent:
    """alice runs a process in GPU instance 13, carol holds instance 2 and runs nothing, GI 5 is
    nobody's; dan holds the whole L40S; erin and fay share the other one."""
    gpus = [
        FakeGPU(H100, "NVIDIA H100 80GB HBM3", 81559, mig_enabled=True, mig_instances=[
            FakeMIG(MIG_2, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3, 2, []),
            FakeMIG(MIG_13, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1, 13, [FakeProcess(7001, 1 << 30)]),
            FakeMIG(MIG_5, "NVIDIA H100 80GB HBM3 MIG 2g.20gb", 19968, 2, 5, []),
        ]),
        FakeGPU(WHOLE, "NVIDIA L40S", 46068, utilization=70),
        FakeGPU(SHARED, "NVIDIA L40S", 46068, utilization=55),
    ]
    nvml = FakeNVML(gpus)
    nvml.nvmlInit()
    servers = {
        "a" * 64: labels("alice", MIG_13), "c" * 64: labels("carol", MIG_2), "d" * 64: labels("dan", WHOLE),
        "e" * 64: labels("erin", SHARED + "/slot-0"), "f" * 64: labels("fay", SHARED + "/slot-1"),
    }
    root = proc_tree(tmp_path / "proc", host=True, containers={7001: "a" * 64})
    return NodeAgent("gpu-1", ContainerDirectory(Listing(servers)), ProcReader(root), ttl=0, nvml=nvml)


def _wait(prom: PrometheusServer, expr: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 60
    while True:
        result = prom.query(expr)
        if len(result) >= count or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_dcgm_series_join_gpuhub_users_by_gpu_instance_id(tmp_path, serve_agent, dcgm_exporter):
    if not os.path.exists(PROMETHEUS):
        unavailable("Debian's prometheus package is not installed")
    header = RULES.read_text()
    assert MIG_JOIN in header and GPU_JOIN in header  # the documented joins are these
    url = serve_agent(agent(tmp_path), TOKEN)
    token_file = tmp_path / "agent-token"
    token_file.write_text(TOKEN)
    jobs = [
        {"job_name": "gpuhub-node-agent", "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
         "static_configs": [{"targets": [url.removeprefix("http://")]}]},
        {"job_name": "dcgm-exporter", "static_configs": [{"targets": [dcgm_exporter]}]},
    ]
    prom = PrometheusServer(tmp_path / "prom", jobs, rule_files=[RULES])
    try:
        mig = _wait(prom, MIG_JOIN, 2)
        got = {(r["metric"]["GPU_I_ID"], r["metric"]["user"]): float(r["value"][1]) for r in mig}
        # alice's instance by her process's instance, carol's held but idle; GI 5 is nobody's
        assert got == {("13", "alice"): 0.42, ("2", "carol"): 0.05}, mig
        assert {r["metric"]["GPU_I_PROFILE"] for r in mig} == {"1g.10gb", "3g.40gb"}
        whole = _wait(prom, GPU_JOIN, 1)
        # dan's whole GPU; the shared GPU is left out (its figures cannot be split per user)
        assert [(r["metric"]["user"], float(r["value"][1])) for r in whole] == [("dan", 70.0)], whole
    finally:
        prom.stop()
