"""The node agent's parts without a hub: cgroup parsing, attribution, the activity document,
the dcgm job-mapping files, the label cache, and the collector over a FAKE NVML and a /proc tree
written in a temporary directory.  The same agent against a real hub and Prometheus is in
test_exporter_prometheus.py; against the real NVML in the ``gpu`` test at the end."""

from __future__ import annotations

import pytest
from fakes.fake_nvml import FakeGPU, FakeMIG, FakeNVML, FakeProcess
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuhub_spawner.node.agent import AgentCollector, NodeAgent, write_job_mapping
from gpuhub_spawner.node.attribution import Server, activity, attribute, job_mapping
from gpuhub_spawner.node.cgroup import ProcReader, container_id_from_cgroup
from gpuhub_spawner.node.containers import ContainerDirectory, unit_from_env
from gpuhub_spawner.node.nvml import NVMLUnavailable, load_nvml, sample_devices

A = "a" * 64
B = "0123456789abcdef" * 4
OUTER = "f" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("12:memory:/docker/" + A + "\n11:pids:/docker/" + A + "\n", A, id="v1-cgroupfs"),
        pytest.param("0::/system.slice/docker-" + A + ".scope\n", A, id="v2-systemd"),
        pytest.param("0::/docker/" + A + "\n", A, id="v2-cgroupfs"),
        pytest.param("0::/docker/" + A + "/init.scope\n", A, id="v2-nested-sub-cgroup"),
        pytest.param("0::/docker/" + OUTER + "/docker/" + B + "\n", B, id="docker-in-docker-innermost"),
        pytest.param("0::/../docker-" + B + ".scope\n", B, id="v2-other-cgroup-namespace"),
        pytest.param(
            "12:memory:/docker/"
            + OUTER
            + "/docker/"
            + B
            + "\n1:name=systemd:/docker/"
            + OUTER
            + "/docker/"
            + B
            + "\n",
            B,
            id="v1-docker-in-docker",
        ),
        pytest.param("1:name=systemd:/\n0::/init.scope\n", None, id="host-process"),
        pytest.param("0::/user.slice/user-1000.slice/session-2.scope\n", None, id="user-session"),
        pytest.param("0::/docker/" + A[:63] + "\n", None, id="short-id-is-not-an-id"),
        pytest.param("0::/system.slice/docker.service\n", None, id="dockerd-itself"),
        pytest.param("", None, id="empty"),
        pytest.param(
            "5:cpu:/docker/" + A + "\n0::/system.slice/docker-" + B + ".scope\n", B, id="unified-wins"
        ),
    ],
)
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


def write_proc(root, pid: int, text: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(text)


def test_proc_reader_reads_the_host_proc_it_is_given(tmp_path):
    write_proc(tmp_path, 41, "0::/system.slice/docker-" + A + ".scope\n")
    reader = ProcReader(str(tmp_path))
    assert reader.container_of(41) == A
    assert reader.container_of(42) is None  # the process ended between NVML and /proc


MIG1 = "MIG-11111111-0000-4000-8000-000000000001"
MIG2 = "MIG-11111111-0000-4000-8000-000000000002"
WHOLE = "GPU-22222222-0000-4000-8000-000000000002"
SHARED = "GPU-33333333-0000-4000-8000-000000000003"
H100 = "GPU-11111111-0000-4000-8000-000000000001"


def fleet() -> list[FakeGPU]:
    return [
        FakeGPU(
            H100,
            "NVIDIA H100 80GB HBM3",
            81559,
            mig_enabled=True,
            mig_instances=[
                FakeMIG(MIG1, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856, 1, 3, [FakeProcess(101, 300)]),
                FakeMIG(MIG2, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40192, 3, 1, []),
            ],
        ),
        FakeGPU(
            WHOLE,
            "NVIDIA L40S",
            46068,
            utilization=55,
            memory_utilization=12,
            processes=[FakeProcess(201, 1000), FakeProcess(202, 500), FakeProcess(999, 7)],
        ),
        FakeGPU(
            SHARED, "NVIDIA L4", 23034, utilization=80, processes=[FakeProcess(301, 40), FakeProcess(401, 60)]
        ),
    ]


SERVERS = {
    A: Server(A, "alice", "", MIG1, "mig-1g.10gb", "small"),
    B: Server(B, "bob", "", WHOLE, "gpu", "big"),
    "c" * 64: Server("c" * 64, "carol", "", MIG2, "mig-3g.40gb", "medium"),
    "d" * 64: Server("d" * 64, "dan", "lab", SHARED + "/slot-0", "shared", "shared"),
    "e" * 64: Server("e" * 64, "erin", "lab", SHARED + "/slot-1", "shared", "shared"),
    "f" * 64: Server("f" * 64, "fay", "", "", "", "cpu"),
}
PIDS = {101: A, 201: B, 202: B, 301: "d" * 64, 401: "e" * 64, 999: None}


@pytest.fixture
def nvml() -> FakeNVML:
    fake = FakeNVML(fleet())
    fake.nvmlInit()
    return fake


def test_attribution_and_activity_document(nvml):
    devices = sample_devices(nvml)
    result = attribute(devices, PIDS, SERVERS)
    assert result.usage[(A, H100, MIG1)].memory_used_bytes == 300
    assert (
        result.usage[(B, WHOLE, "")].memory_used_bytes == 1500 and result.usage[(B, WHOLE, "")].processes == 2
    )
    assert result.unattributed == {(WHOLE, ""): 1}
    doc = activity("gpu-1", 1234.5, devices, result)
    assert doc["node"] == "gpu-1" and doc["time"] == 1234.5
    rows = {(s["user"], s["server"]): s for s in doc["servers"]}
    assert rows[("alice", "")] == {
        "user": "alice",
        "server": "",
        "container": A,
        "units": [MIG1],
        "memory_used_bytes": 300,
        "process_count": 1,
        "utilization_percent": None,
        "mig": True,
    }
    assert rows[("bob", "")]["utilization_percent"] == 55 and rows[("bob", "")]["memory_used_bytes"] == 1500
    # shared slots: memory per user, but utilization cannot be split: null
    assert (
        rows[("dan", "lab")]["memory_used_bytes"] == 40
        and rows[("dan", "lab")]["utilization_percent"] is None
    )
    assert rows[("carol", "")]["process_count"] == 0 and rows[("carol", "")]["memory_used_bytes"] == 0
    assert rows[("fay", "")]["units"] == [] and rows[("fay", "")]["mig"] is False
    assert [s["user"] for s in doc["servers"]] == ["alice", "bob", "carol", "dan", "erin", "fay"]


def test_job_mapping_names_files_like_dcgm_exporter(nvml, tmp_path):
    files = job_mapping(sample_devices(nvml), SERVERS.values())
    # GPU 0 is MIG-enabled: its instances are 0.<GPU instance id>; it has no file of its own
    assert files == {"0": [], "0.3": ["alice"], "0.1": ["carol"], "1": ["bob"], "2": ["dan/lab", "erin/lab"]}
    (tmp_path / "7").write_text("gone\n")  # a GPU no longer present
    (tmp_path / "notes.txt").write_text("not ours")
    write_job_mapping(tmp_path, files)
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert written == {
        "0.3": "alice\n",
        "0.1": "carol\n",
        "1": "bob\n",
        "2": "dan/lab\nerin/lab\n",
        "notes.txt": "not ours",
    }
    write_job_mapping(tmp_path, {**files, "1": []})
    assert not (tmp_path / "1").exists()


class CountingAPI:
    """Stands in for docker.APIClient's two calls, counting them (the real engine is used in
    test_exporter_prometheus.py)."""

    def __init__(self, listed, inspected):
        self.listed, self.inspected = listed, inspected
        self.calls: list[str] = []

    def containers(self, filters):
        self.calls.append("list")
        assert "org.gpuhub.user" in filters["label"] and filters["status"] == "running"
        return self.listed

    def inspect_container(self, cid):
        self.calls.append("inspect " + cid[:4])
        if cid not in self.inspected:
            raise RuntimeError("no such container")
        value = self.inspected[cid]
        if isinstance(value, tuple):  # (labels, env)
            return {"Config": {"Labels": value[0], "Env": value[1]}}
        return {"Config": {"Labels": value}}


def test_container_directory_caches_labels_and_lists_at_most_every_refresh():
    now = [100.0]
    labels_a = {"org.gpuhub.user": "alice", "org.gpuhub.unit": MIG1, "org.gpuhub.hub": "h1"}
    api = CountingAPI(
        [{"Id": A, "Labels": labels_a}], {B: {"org.gpuhub.user": "bob", "org.gpuhub.hub": "h1"}, "9" * 64: {}}
    )
    d = ContainerDirectory(api, refresh=5, hub_id="h1", clock=lambda: now[0])
    assert set(d.servers()) == {A}
    assert set(d.servers()) == {A}
    assert d.server_of(A).user == "alice"  # listed: labels already cached
    assert d.server_of(B).user == "bob"  # new since the listing: one inspect
    assert d.server_of(B).user == "bob"
    assert d.server_of("9" * 64) is None and d.server_of("9" * 64) is None  # not a gpuhub server: cached too
    assert api.calls == ["list", "inspect 0123", "inspect 9999"]
    now[0] += 5
    d.servers()
    assert api.calls[-1] == "list" and len(api.calls) == 4


def test_swarm_servers_get_their_unit_from_the_assigned_resource_once():
    """On a swarm the unit label is missing (swarm picks the unit after the container is
    defined): the unit is read once from DOCKER_RESOURCE_<KIND> in the container's env."""
    labels = {"org.gpuhub.user": "carol", "org.gpuhub.hub": "h1"}
    env = ["PATH=/usr/bin", f"DOCKER_RESOURCE_NVIDIA_MIG_1G_10GB={MIG1}", "JUPYTERHUB_USER=carol"]
    api = CountingAPI([{"Id": A, "Labels": labels}], {A: (labels, env), B: ({"org.gpuhub.user": "dan"}, ["X=1"])})
    d = ContainerDirectory(api, refresh=0, hub_id="")
    assert d.servers()[A].unit == MIG1
    assert d.servers()[A].unit == MIG1
    assert api.calls == ["list", "inspect aaaa", "list"]  # inspected once, then cached
    assert d.server_of(B).unit == ""  # no assigned resource (a CPU-only server): no unit
    # a shared slot is a discrete count: its value is not a device
    assert unit_from_env(["DOCKER_RESOURCE_NVIDIA_SHARED_5A5A=1", "NVIDIA_VISIBLE_DEVICES=GPU-x"]) == ""


def test_collector_exports_devices_and_per_user_series(nvml, tmp_path):
    for pid, cid in PIDS.items():
        write_proc(tmp_path, pid, f"0::/system.slice/docker-{cid}.scope\n" if cid else "0::/init.scope\n")
    listed = [{"Id": cid, "Labels": _labels(s)} for cid, s in SERVERS.items()]
    agent = NodeAgent(
        "gpu-1", ContainerDirectory(CountingAPI(listed, {})), ProcReader(str(tmp_path)), ttl=60, nvml=nvml
    )
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def one(name, **match):
        found = [
            v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in match.items())
        ]
        assert len(found) == 1, (name, match, samples.get(name))
        return found[0]

    assert one("gpuhub_gpu_agent_nvml_up", node="gpu-1") == 1
    assert one("gpuhub_gpu_user_memory_used_bytes", user="alice", mig_uuid=MIG1, gpu_uuid=H100) == 300
    assert one("gpuhub_gpu_user_memory_used_bytes", user="bob", gpu_uuid=WHOLE) == 1500
    assert one("gpuhub_gpu_user_processes", user="bob") == 2
    assert one("gpuhub_gpu_user_utilization_ratio", user="bob") == 0.55
    # no utilization per MIG instance or per shared slot, and none for a MIG-enabled GPU
    assert {labels["user"] for labels, _ in samples["gpuhub_gpu_user_utilization_ratio"]} == {"bob"}
    assert {labels["gpu_uuid"] for labels, _ in samples["gpuhub_gpu_utilization_ratio"]} == {WHOLE, SHARED}
    assert one("gpuhub_gpu_mig_memory_total_bytes", mig_uuid=MIG2, profile="3g.40gb") == 40192 * 1024 * 1024
    assert one("gpuhub_gpu_memory_used_bytes", gpu_uuid=WHOLE) == 1507
    assert one("gpuhub_gpu_unattributed_processes", gpu_uuid=WHOLE) == 1
    assert one("gpuhub_gpu_server_info", user="fay", unit="", profile="cpu") == 1
    assert len(samples["gpuhub_gpu_server_info"]) == 6
    # every per-user series belongs to a gpuhub server: PID 999 (no container) is nobody's
    users = {labels["user"] for labels, _ in samples["gpuhub_gpu_user_memory_used_bytes"]}
    assert users == {"alice", "bob", "dan", "erin"}


def _labels(s: Server) -> dict[str, str]:
    return {
        "org.gpuhub.user": s.user,
        "org.gpuhub.server": s.server,
        "org.gpuhub.unit": s.unit,
        "org.gpuhub.pool": s.pool,
        "org.gpuhub.profile": s.profile,
    }


def test_agent_without_nvml_still_lists_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUHUB_NVML_MODULE", "fakes.fake_nvml_file")
    monkeypatch.setenv("GPUHUB_FAKE_NVML_FILE", str(tmp_path / "absent.json"))  # "no driver"
    with pytest.raises(NVMLUnavailable):
        load_nvml()
    listed = [{"Id": A, "Labels": _labels(SERVERS[A])}]
    agent = NodeAgent("cpu-node", ContainerDirectory(CountingAPI(listed, {})), ProcReader(str(tmp_path)))
    doc = agent.activity()
    assert [s["user"] for s in doc["servers"]] == ["alice"] and doc["servers"][0]["memory_used_bytes"] == 0
    assert agent.snapshot().nvml_up is False


@pytest.mark.gpu
def test_agent_against_the_real_nvml(tmp_path):
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        pytest.skip(f"no NVIDIA driver/NVML on this machine: {e}")
    devices = sample_devices(nvml)
    assert devices, "NVML initialised but reported no GPU"
    for d in devices:
        assert d.uuid.startswith("GPU-") and d.memory_total > 0 and 0 <= d.memory_used <= d.memory_total
        if d.mig_enabled:
            assert d.utilization is None
            assert all(m.uuid.startswith("MIG-") and m.memory_total > 0 for m in d.mig)
        for p in d.processes + [p for m in d.mig for p in m.processes]:
            assert p.pid > 0
    agent = NodeAgent("real", ContainerDirectory(CountingAPI([], {})), ProcReader("/proc"), nvml=nvml)
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    text = generate_latest(registry).decode()
    assert "gpuhub_gpu_memory_total_bytes" in text and 'gpuhub_gpu_agent_nvml_up{node="real"} 1.0' in text


# ---- the agent's token (issue 11: the agent's port is reachable from users' servers) ---------

TOKEN = "s3cret-agent-token-0123456789abcdef"


@pytest.fixture
def agent_server(tmp_path, serve_agent):
    """An agent that lists alice's server and never loads NVML, served on a loopback port."""
    listed = [{"Id": A, "Labels": _labels(SERVERS[A])}]
    agent = NodeAgent("gpu-1", ContainerDirectory(CountingAPI(listed, {})), ProcReader(str(tmp_path)), nvml=None)
    agent._nvml_tried = 1e18  # never loads NVML: servers only
    return lambda token: serve_agent(agent, token)


@pytest.mark.parametrize("path", ["/metrics", "/api/activity", "/"])
def test_agent_refuses_requests_without_its_token(agent_server, path):
    import requests

    url = agent_server(TOKEN) + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
        r = requests.get(url, headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert "alice" not in r.text and "gpuhub_gpu" not in r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for scheme in ("Bearer", "bearer", "token"):  # Prometheus sends Bearer; JupyterHub's style is token
        r = requests.get(url, headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=10)
        assert r.status_code == 200, (scheme, r.status_code, r.text)
    if path == "/api/activity":
        assert [s["user"] for s in r.json()["servers"]] == ["alice"]
    if path == "/metrics":
        assert 'gpuhub_gpu_server_info{' in r.text and 'user="alice"' in r.text


@pytest.mark.parametrize(
    "token_text, no_auth, ip, expected",
    [
        pytest.param(TOKEN + "\n", False, "0.0.0.0", TOKEN, id="token-file"),
        pytest.param(None, False, "0.0.0.0", "no --token-file", id="no-token-refused"),
        pytest.param(None, False, "127.0.0.1", "no --token-file", id="no-token-refused-on-loopback-too"),
        pytest.param("short\n", False, "0.0.0.0", "at least 16 characters", id="short-token"),
        pytest.param("", False, "0.0.0.0", "at least 16 characters", id="empty-file"),
        pytest.param(None, True, "127.0.0.1", None, id="no-auth-loopback"),
        pytest.param(None, True, "::1", None, id="no-auth-loopback-v6"),
        pytest.param(None, True, "0.0.0.0", "only allowed with a loopback", id="no-auth-everywhere-refused"),
        pytest.param(None, True, "172.17.0.1", "only allowed with a loopback", id="no-auth-bridge-refused"),
        pytest.param(TOKEN, True, "127.0.0.1", "not both", id="both"),
    ],
)
def test_agent_token_settings(tmp_path, token_text, no_auth, ip, expected):
    from gpuhub_spawner.node.agent import AgentConfigError, read_token

    path = ""
    if token_text is not None:
        path = str(tmp_path / "token")
        (tmp_path / "token").write_text(token_text)
    if expected is None or expected == TOKEN:
        assert read_token(path, no_auth, ip) == expected
    else:
        with pytest.raises(AgentConfigError, match=expected):
            read_token(path, no_auth, ip)


def test_agent_command_refuses_to_start_without_a_token(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gpuhub_spawner.node.agent", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "gpuhub-node-agent: no --token-file" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "gpuhub_spawner.node.agent", "--port", "0", "--no-auth"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "only allowed with a loopback --ip" in done.stderr, done.stderr


def test_the_cullers_agent_reader_sends_the_token_from_its_file(agent_server, tmp_path, monkeypatch):
    """hub_services.culler.signals.read_agents against the real agent: with the file named by
    GPUHUB_GPU_AGENT_TOKEN_FILE it gets the servers; without it the agent counts as failed (the
    culler then treats its servers as GPU-busy, never as idle)."""
    import asyncio

    from hub_services.common.hubapi import BoundedHTTP
    from hub_services.culler.signals import read_agents

    url = agent_server(TOKEN)

    async def read():
        return await read_agents(BoundedHTTP(concurrency=2, timeout=10), [url])

    monkeypatch.delenv("GPUHUB_GPU_AGENT_TOKEN_FILE", raising=False)
    view = asyncio.run(read())
    assert view.failed == [url] and not view.readings
    (tmp_path / "agent-token").write_text(TOKEN + "\n")
    monkeypatch.setenv("GPUHUB_GPU_AGENT_TOKEN_FILE", str(tmp_path / "agent-token"))
    view = asyncio.run(read())
    assert view.failed == [] and ("alice", "") in view.readings
    monkeypatch.setenv("GPUHUB_GPU_AGENT_TOKEN_FILE", str(tmp_path / "absent"))
    view = asyncio.run(read())
    assert view.failed == [url]


# ---- gpuhub node agent install/unit: the spec (the real engine: test_agent_install.py) ------------


def test_agent_container_spec_and_its_docker_run_line_agree():
    from gpuhub_spawner.node.agent_install import AgentContainer

    spec = AgentContainer(token_file="/etc/gpuhub/t", node_name="gpu-1", port=9500, publish_ip="10.0.0.5",
                          hub_id="h1", job_mapping_dir="/run/dcgm-jobs")
    kw = spec.run_kwargs()
    assert (kw["pid_mode"], kw["cgroupns"], kw["restart_policy"], kw["runtime"]) == (
        "host", "host", {"Name": "unless-stopped"}, "nvidia")
    assert kw["command"] == ["--port", "9500", "--host-proc", "/proc", "--token-file",
                             "/run/secrets/gpuhub-agent-token", "--hub-id", "h1", "--hpc-job-mapping-dir",
                             "/run/dcgm-jobs"]
    assert kw["ports"] == {"9500/tcp": ("10.0.0.5", 9500)}
    assert "/etc/gpuhub/t:/run/secrets/gpuhub-agent-token:ro" in kw["volumes"]
    assert kw["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    line = spec.docker_run()
    for option in (["--pid", "host"], ["--cgroupns", "host"], ["--restart", "unless-stopped"],
                   ["--runtime", "nvidia"], ["-p", "10.0.0.5:9500:9500"], ["-e", "GPUHUB_NODE_NAME=gpu-1"]):
        i = line.index(option[0], line.index("run"))
        assert option[1] in line[i:], (option, line)
    assert line[-len(kw["command"]):] == kw["command"] and kw["image"] in line
    no_runtime = AgentContainer(runtime="")
    assert "runtime" not in no_runtime.run_kwargs() and "--runtime" not in no_runtime.docker_run()


def test_systemd_unit_runs_the_agent_as_a_host_process():
    from gpuhub_spawner.node.agent_install import AgentContainer, systemd_unit

    unit = systemd_unit("/opt/gpuhub/bin/gpuhub-node-agent",
                        AgentContainer(token_file="/etc/gpuhub/agent token", node_name="gpu 1", hub_id="h1"))
    assert "ExecStart=/opt/gpuhub/bin/gpuhub-node-agent --port 9469 --host-proc /proc --token-file " \
           "'/etc/gpuhub/agent token' --hub-id h1\n" in unit
    assert "Environment='GPUHUB_NODE_NAME=gpu 1'\n" in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit and "NoNewPrivileges=yes" in unit
