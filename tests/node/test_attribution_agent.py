"""The node agent where real drivers differ from the old fake (issue 14): a PID namespace that
hides users' processes, NVML errors that are not ``NVMLError`` (or are, with codes that need an
operator), MIG instance ids for dcgm-exporter.  FAKE NVML (tests/support/fakes/fake_nvml.py)
and a /proc tree written in a temporary directory; the agent's real tornado application."""

from __future__ import annotations

import logging

import pytest
import requests
from fakes.fake_nvml import (
    NVML_ERROR_NO_PERMISSION,
    FakeGPU,
    FakeMIG,
    FakeNVML,
    FakeProcess,
    NVMLError,
    NVMLLibraryMismatchError,
)
from prometheus_client.parser import text_string_to_metric_families

from gpuhub_spawner.node.agent import NodeAgent, check_pid_view
from gpuhub_spawner.node.cgroup import ProcReader
from gpuhub_spawner.node.containers import ContainerDirectory

TOKEN = "agent-token-for-issue-14-0123456789"
ALICE = "a" * 64
BOB = "b" * 64
WHOLE = "GPU-22222222-0000-4000-8000-000000000002"
H100 = "GPU-11111111-0000-4000-8000-000000000001"
MIG_A = "MIG-11111111-0000-4000-8000-00000000000a"
MIG_B = "MIG-11111111-0000-4000-8000-00000000000b"


class Listing:
    """docker.APIClient's two calls the agent makes, over a fixed list (the real engine's are
    in test_agent_install.py)."""

    def __init__(self, servers: dict[str, dict[str, str]]):
        self.servers = servers

    def containers(self, filters):
        return [{"Id": cid, "Labels": labels} for cid, labels in self.servers.items()]

    def inspect_container(self, cid):
        raise RuntimeError("no such container")


def labels(user: str, unit: str) -> dict[str, str]:
    return {"org.gpuhub.user": user, "org.gpuhub.unit": unit, "org.gpuhub.pool": "p", "org.gpuhub.profile": "p"}


def proc_tree(root, *, host: bool, containers: dict[int, str]) -> str:
    """A /proc as the agent sees it: kernel threads (PID 2), its own status (one NSpid entry in
    the host's PID namespace, two in a container's) and the cgroup of each GPU process."""
    (root / "2").mkdir(parents=True)
    (root / "2" / "status").write_text("Name:\tkthreadd\nPid:\t2\nPPid:\t0\nNSpid:\t2\n")
    (root / "self").mkdir()
    (root / "self" / "status").write_text(f"Name:\tgpuhub-node-age\nNSpid:\t{'4242' if host else '4242	1'}\n")
    for pid, cid in containers.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    return str(root)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text[-2000:])
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def whole_gpu_with(*procs: FakeProcess) -> FakeGPU:
    return FakeGPU(WHOLE, "NVIDIA L40S", 46068, utilization=40, processes=list(procs))


# ---- 1. the agent says when it cannot see the host's PIDs ---------------------------------------


def activity(url: str) -> requests.Response:
    return requests.get(url + "/api/activity", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


@pytest.mark.parametrize(
    "host, driver_filters, private_ok",
    [
        pytest.param(True, True, False, id="host-pid-namespace"),
        pytest.param(False, True, False, id="own-pid-namespace"),
        # the old swarm service on a driver before 535.113, which the operator vouches for
        pytest.param(False, False, True, id="own-pid-namespace-old-driver-private-ok"),
    ],
)
def test_agent_says_when_attribution_cannot_work(tmp_path, serve_agent, caplog, host, driver_filters, private_ok):
    """Drivers >= 535.113 translate PIDs into the caller's namespace and drop the rest: in a
    container's own PID namespace the agent gets no user's process, so per-user series would be
    silently empty.  The agent checks at start, exports gpuhub_gpu_agent_host_pid_view, logs
    what to do, and answers /api/activity with 503 rather than zeros the culler would read as
    idle."""
    pids = {7001: ALICE, 7002: BOB}
    # the agent's own namespace sees none of the users' processes (they are in other containers)
    nvml = FakeNVML([whole_gpu_with(FakeProcess(7001, 3 << 30), FakeProcess(7002, 1 << 30))],
                    pid_view=None if host else {}, pid_filtering=driver_filters)
    nvml.nvmlInit()
    root = proc_tree(tmp_path / "proc", host=host, containers=pids)
    with caplog.at_level(logging.INFO, logger="gpuhub_spawner.node.agent"):
        view = check_pid_view(root, private_ok)
    directory = ContainerDirectory(Listing({ALICE: labels("alice", WHOLE), BOB: labels("bob", WHOLE)}))
    agent = NodeAgent("gpu-1", directory, ProcReader(root), ttl=0, nvml=nvml, pid_view=view,
                      private_pid_ok=private_ok)
    url = serve_agent(agent, TOKEN)
    samples = scrape(url)
    assert samples["gpuhub_gpu_agent_host_pid_view"] == [({"node": "gpu-1"}, 1.0 if host else 0.0)]
    users = {lab["user"]: v for lab, v in samples.get("gpuhub_gpu_user_memory_used_bytes", [])}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    r = activity(url)
    if host or private_ok:
        assert users == {"alice": 3 << 30, "bob": 1 << 30}
        assert r.status_code == 200 and {s["user"]: s["memory_used_bytes"] for s in r.json()["servers"]} == users
    else:
        assert users == {}  # what the real driver gives: nothing to attribute
        assert r.status_code == 503 and "does not see the host's PIDs" in r.json()["error"], r.text
    if host:
        assert warnings == []
    else:
        [warning] = warnings
        assert "PID namespace of its own" in warning and "gpuhub node agent install" in warning
        assert ("Per-user GPU attribution will be EMPTY" in warning) is not private_ok
        assert "--pid=host --cgroupns=host" in warning


# ---- 5. /metrics never answers 500 on NVML's errors -----------------------------------------------


class FailingNVML(FakeNVML):
    """The FAKE NVML whose device count (the first call of every sample) raises ``error`` while
    it is set: an error no sampling code below the agent can work around."""

    error: Exception | None = None

    def nvmlDeviceGetCount(self) -> int:
        if self.error is not None:
            raise self.error
        return super().nvmlDeviceGetCount()


@pytest.mark.parametrize(
    "make_error, reason",
    [
        pytest.param(lambda: NVMLLibraryMismatchError("pyNVML version does not match"), "library-mismatch",
                     id="library-mismatch-is-not-an-NVMLError"),
        pytest.param(lambda: NVMLError(NVML_ERROR_NO_PERMISSION), "no-permission", id="no-permission"),
        pytest.param(lambda: NVMLError(13), "function-not-found", id="function-not-found"),
        pytest.param(lambda: ValueError("a struct the library did not fill"), "unexpected", id="unexpected"),
    ],
)
def test_metrics_answer_with_the_reason_when_nvml_fails(tmp_path, serve_agent, caplog, make_error, reason):
    nvml = FailingNVML([whole_gpu_with(FakeProcess(7001, 1 << 30))])
    nvml.nvmlInit()
    root = proc_tree(tmp_path / "proc", host=True, containers={7001: ALICE})
    directory = ContainerDirectory(Listing({ALICE: labels("alice", WHOLE)}))
    agent = NodeAgent("gpu-1", directory, ProcReader(root), ttl=0, nvml=nvml)
    url = serve_agent(agent, TOKEN)
    nvml.error = make_error()
    with caplog.at_level(logging.WARNING, logger="gpuhub_spawner.node.agent"):
        for _ in range(3):
            samples = scrape(url)
        r = activity(url)
    # the culler must not read "no GPU use" from an agent that could not read NVML
    assert r.status_code == 503 and reason in r.json()["error"], r.text
    assert samples["gpuhub_gpu_agent_nvml_up"] == [({"node": "gpu-1"}, 0.0)]
    assert samples["gpuhub_gpu_agent_nvml_error"] == [({"node": "gpu-1", "reason": reason}, 1.0)]
    assert samples["gpuhub_gpu_agent_nvml_errors_total"] == [({"node": "gpu-1", "reason": reason}, 3.0)]
    # what could not be read is absent, never zero
    assert "gpuhub_gpu_memory_used_bytes" not in samples and "gpuhub_gpu_user_memory_used_bytes" not in samples
    warnings = [r.getMessage() for r in caplog.records if "NVML read failed" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not at every scrape
    nvml.error = None  # fixed (e.g. the matching nvidia-ml-py installed): back without a restart
    samples = scrape(url)
    assert samples["gpuhub_gpu_agent_nvml_up"] == [({"node": "gpu-1"}, 1.0)]
    assert "gpuhub_gpu_agent_nvml_error" not in samples
    assert activity(url).json()["servers"][0]["memory_used_bytes"] == 1 << 30
    assert samples["gpuhub_gpu_user_memory_used_bytes"][0][1] == 1 << 30


# ---- 6. MIG series carry the GPU and compute instance ids dcgm-exporter labels with -------------


def test_mig_series_carry_instance_ids_for_dcgm_exporter(tmp_path, serve_agent):
    """dcgm-exporter names a MIG instance by its parent's UUID and GPU_I_ID: the agent's MIG
    series carry gpu_instance_id (sparse ids, as the driver assigns them) and compute_instance_id."""
    gpu = FakeGPU(
        H100, "NVIDIA H100 80GB HBM3", 81559, mig_enabled=True,
        mig_instances=[
            FakeMIG(MIG_A, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1, 13, [FakeProcess(7001, 5 << 20)]),
            None,
            FakeMIG(MIG_B, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3, 2, [FakeProcess(7009, 1 << 20)]),
        ],
    )
    nvml = FakeNVML([gpu])
    nvml.nvmlInit()
    root = proc_tree(tmp_path / "proc", host=True, containers={7001: ALICE})
    agent = NodeAgent("gpu-1", ContainerDirectory(Listing({ALICE: labels("alice", MIG_A)})), ProcReader(root),
                      ttl=0, nvml=nvml)
    samples = scrape(serve_agent(agent, TOKEN))
    [(user, used)] = samples["gpuhub_gpu_user_memory_used_bytes"]
    assert used == 5 << 20
    assert (user["gpu_uuid"], user["mig_uuid"], user["gpu_instance_id"], user["compute_instance_id"]) == (
        H100, MIG_A, "13", "0")
    totals = {lab["gpu_instance_id"]: lab for lab, _ in samples["gpuhub_gpu_mig_memory_total_bytes"]}
    assert set(totals) == {"13", "2"} and totals["2"]["mig_uuid"] == MIG_B
    [(other, count)] = samples["gpuhub_gpu_unattributed_processes"]
    assert (other["gpu_instance_id"], count) == ("2", 1.0)
    whole = [lab for lab, _ in samples["gpuhub_gpu_processes"] if not lab["mig_uuid"]]
    assert whole == []  # a MIG-enabled GPU is counted per instance only


# ---- 3. MIG handles that list every instance's processes; MPS clients -----------------------------


def mig_gpu(alice_bytes: int, bob_bytes: int) -> FakeGPU:
    return FakeGPU(
        H100, "NVIDIA H100 80GB HBM3", 81559, mig_enabled=True,
        mig_instances=[
            FakeMIG(MIG_A, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1, 13, [FakeProcess(7001, alice_bytes)]),
            FakeMIG(MIG_B, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3, 2, [FakeProcess(7002, bob_bytes)]),
        ],
    )


@pytest.mark.parametrize("lists_all", [False, True], ids=["mig-handle-lists-its-own", "root-mig-handle-lists-all"])
def test_mig_processes_count_only_in_their_own_instance(tmp_path, serve_agent, lists_all):
    """Queried as root, a MIG handle may list every instance's processes (each with its
    gpuInstanceId): alice's process must not show up on bob's instance, nor twice in her total."""
    nvml = FakeNVML([mig_gpu(5 << 20, 7 << 20)], privileged=True, mig_handle_lists_all=lists_all)
    nvml.nvmlInit()
    root = proc_tree(tmp_path / "proc", host=True, containers={7001: ALICE, 7002: BOB})
    directory = ContainerDirectory(Listing({ALICE: labels("alice", MIG_A), BOB: labels("bob", MIG_B)}))
    agent = NodeAgent("gpu-1", directory, ProcReader(root), ttl=0, nvml=nvml)
    samples = scrape(serve_agent(agent, TOKEN))
    per_user = {(lab["user"], lab["mig_uuid"]): v for lab, v in samples["gpuhub_gpu_user_memory_used_bytes"]}
    assert per_user == {("alice", MIG_A): 5 << 20, ("bob", MIG_B): 7 << 20}
    counts = {lab["mig_uuid"]: v for lab, v in samples["gpuhub_gpu_processes"]}
    assert counts == {MIG_A: 1.0, MIG_B: 1.0}
    rows = {s["user"]: s for s in agent.activity()["servers"]}
    assert rows["alice"]["memory_used_bytes"] == 5 << 20 and rows["alice"]["process_count"] == 1


def test_mps_clients_count_for_their_containers_not_the_server(tmp_path, serve_agent):
    """Under MPS the compute list holds the MPS server (in the node's daemon container) and the
    users' processes are clients in NVML's MPS list: memory goes to each client's server."""
    daemon = "d" * 64  # the MPS control daemon's container: not a gpuhub server
    gpu = whole_gpu_with(
        FakeProcess(6000, 512 << 20),  # nvidia-cuda-mps-server
        FakeProcess(7001, 1 << 30, mps_client=True),
        FakeProcess(7002, 2 << 30, mps_client=True),
    )
    nvml = FakeNVML([gpu])
    nvml.nvmlInit()
    root = proc_tree(tmp_path / "proc", host=True, containers={6000: daemon, 7001: ALICE, 7002: BOB})
    shared = {ALICE: labels("alice", WHOLE + "/slot-0"), BOB: labels("bob", WHOLE + "/slot-1")}
    agent = NodeAgent("gpu-1", ContainerDirectory(Listing(shared)), ProcReader(root), ttl=0, nvml=nvml)
    samples = scrape(serve_agent(agent, TOKEN))
    per_user = {lab["user"]: v for lab, v in samples["gpuhub_gpu_user_memory_used_bytes"]}
    assert per_user == {"alice": 1 << 30, "bob": 2 << 30}
    assert samples["gpuhub_gpu_unattributed_processes"] == [
        ({"node": "gpu-1", "gpu_uuid": WHOLE, "mig_uuid": "", "gpu_instance_id": "", "compute_instance_id": ""}, 1.0)
    ]
    rows = {s["user"]: s["process_count"] for s in agent.activity()["servers"]}
    assert rows == {"alice": 1, "bob": 1}
