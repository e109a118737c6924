"""Per-user GPU metrics end to end: a real hub spawns real containers on the real engine, the node
agent maps FAKE-NVML processes (real host PIDs of those containers) to users, the hub exporter
runs as the hub-managed service jupyterhub_config.py declares, and a real Prometheus (Debian's
package, started here) scrapes them and the hub's own /hub/metrics.  Every PromQL expression of
the Grafana dashboards is then evaluated against that Prometheus.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from harness import REPO, HubProcess, _children, _cmdline, container_of, fake_gpus, free_port
from needs import unavailable
from promserver import PROMETHEUS, PrometheusServer

GiB = 1024**3
pytestmark = [pytest.mark.docker, pytest.mark.hub]


def _wait(what: str, check, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, KeyError, ValueError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not seen within {timeout}s (last: {last!r})")


def _mig(tag: str, n: int) -> str:
    return f"MIG-{tag}-{n:04d}-0000-0000-000000000000"


@pytest.fixture(scope="module")
def stack(docker_client, tmp_path_factory):
    if not os.path.exists(PROMETHEUS):
        unavailable("Debian's prometheus package is not installed")
    work = tmp_path_factory.mktemp("metrics")
    tag = "e" + os.urandom(3).hex()
    whole = fake_gpus(1, tag, name="NVIDIA L40S", memory_mb=46068)[0]
    mig_gpu = {
        "uuid": f"GPU-{tag}-mig0-0000-0000-000000000000",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_mb": 81559,
        "mig": [
            {"uuid": _mig(tag, 0), "profile": "1g.10gb", "memory_mb": 9856},
            {"uuid": _mig(tag, 1), "profile": "3g.40gb", "memory_mb": 40192},
        ],
    }
    token_file = work / "prometheus-token"
    token_file.write_text(os.urandom(16).hex() + "\n")
    exporter_port = free_port()
    prom_port = free_port()  # known before the hub starts: the GPU Hub page's charts read it
    hub = HubProcess(work / "hub", {"gpu_inventory": [whole, mig_gpu], "gpu_queue_max_wait": 0})
    nvml_file = work / "nvml.json"
    jobs_dir = work / "jobs"
    s = type("Stack", (), {})()
    s.hub, s.tag, s.whole, s.mig_gpu, s.nvml_file, s.jobs_dir = hub, tag, whole, mig_gpu, nvml_file, jobs_dir
    s.prom_token = token_file.read_text().strip()
    s.node = f"node-{tag}"
    procs = []
    prom = None
    try:
        write_nvml(s, {})
        hub.start(
            env={
                "GPUHUB_EXPORTER_PORT": str(exporter_port),
                "GPUHUB_PROMETHEUS_TOKEN_FILE": str(token_file),
                "GPUHUB_QUOTA_DEFAULTS": '{"gpu_hours_per_period": 10, "period": "week"}',
                "GPUHUB_PROMETHEUS_URL": f"http://127.0.0.1:{prom_port}",
                "GPUHUB_ADMIN_USERS": "boss",
            }
        )
        s.agent_url = f"http://127.0.0.1:{free_port()}"
        agent_token_file = work / "agent-token"  # the agent answers only with its token, as deployed
        agent_token_file.write_text(os.urandom(16).hex() + "\n")
        s.agent_headers = {"Authorization": "Bearer " + agent_token_file.read_text().strip()}
        agent_log = open(work / "agent.log", "wb")  # noqa: SIM115
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpuhub_spawner.node.agent",
                "--ip",
                "127.0.0.1",
                "--port",
                s.agent_url.rsplit(":", 1)[1],
                "--node",
                s.node,
                "--hub-id",
                hub.hub_id,
                "--host-proc",
                "/proc",
                "--cache-ttl",
                "0.5",
                "--docker-refresh",
                "1",
                "--hpc-job-mapping-dir",
                str(jobs_dir),
                "--token-file",
                str(agent_token_file),
            ],
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": f"{REPO / 'tests' / 'support'}{os.pathsep}{REPO}",
                "GPUHUB_NVML_MODULE": "fakes.fake_nvml_file",
                "GPUHUB_FAKE_NVML_FILE": str(nvml_file),
            },
            stdout=agent_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(agent)
        s.agent_log = work / "agent.log"
        _wait("agent up", lambda: requests.get(s.agent_url + "/api/activity", headers=s.agent_headers, timeout=2).ok, 30)
        host = hub.url.split("//", 1)[1]
        auth = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
        # Prometheus first, so that it sees the spawns happen (rates of the spawn histogram)
        prom = PrometheusServer(
            work / "prom",
            [
                {
                    "job_name": "agent",
                    "static_configs": [{"targets": [s.agent_url.split("//", 1)[1]]}],
                    "authorization": {"type": "Bearer", "credentials_file": str(agent_token_file)},
                },
                {
                    "job_name": "exporter",
                    "metrics_path": "/services/gpuhub-exporter/metrics",
                    "static_configs": [{"targets": [host]}],
                    **auth,
                },
                {
                    "job_name": "hub",
                    "metrics_path": "/hub/metrics",
                    "static_configs": [{"targets": [host]}],
                    **auth,
                },
            ],
            port=prom_port,
        )
        s.prom = prom
        _wait(
            "all targets up",
            lambda: all(t["health"] == "up" for t in prom.targets()) and len(prom.targets()) == 3,
            60,
        )
        hub.create_users(["alice", "bob", "carol", "dave"])
        # alice: the only MIG 1g.10gb; bob: the whole GPU; carol: MIG 3g.40gb and never uses it
        # (three different units: spawned at once, as a workshop's users do)
        choices = (("alice", "mig-1g-10gb"), ("bob", "gpu"), ("carol", "mig-3g-40gb"))
        with cf.ThreadPoolExecutor(len(choices)) as pool:
            answers = list(pool.map(lambda choice: hub.spawn(choice[0], {"profile": choice[1]}), choices))
        for (user, _), r in zip(choices, answers):
            assert r.status_code in (201, 202), r.text
            hub.wait_ready(user)
        # dave asks for the MIG 1g.10gb alice holds: refused at once (no queue wait configured)
        r = hub.spawn("dave", {"profile": "mig-1g-10gb"})
        if r.status_code == 202:
            _wait("dave's spawn fails", lambda: not hub.user("dave").get("servers"), 30)
        s.containers = {u: container_of(docker_client, hub, u) for u in ("alice", "bob", "carol")}
        # real host PIDs: alice's server process; bob's server process and a second process in
        # his container; and one process in no container at all (this test process)
        bob = s.containers["bob"]
        bob.exec_run(["sh", "-c", "exec sleep 600"], detach=True, user="1000")
        s.bob_sleep = int(
            _wait(
                "sleep in bob's container",
                lambda: [p[1] for p in bob.top()["Processes"] if "sleep 600" in p[-1]],
                20,
            )[0]
        )
        s.pids = {
            "alice": [(s.containers["alice"].attrs["State"]["Pid"], 2 * GiB)],
            "bob": [(bob.attrs["State"]["Pid"], 1 * GiB), (s.bob_sleep, GiB // 2)],
        }
        write_nvml(s, {"utilization": 42})
        yield s
    except BaseException:
        print(hub.log_tail(150))
        for p in (work / "agent.log",):
            if p.exists():
                print(p.read_text()[-4000:])
        raise
    finally:
        if prom is not None:
            prom.stop()
        for p in procs:
            p.terminate()
            p.wait(10)
        hub.cleanup(docker_client)


def write_nvml(s, extra: dict) -> None:
    pids = getattr(s, "pids", {"alice": [], "bob": []})
    procs = lambda who: [{"pid": pid, "used_bytes": used} for pid, used in pids.get(who, [])]  # noqa: E731
    doc = {
        "gpus": [
            {
                "uuid": s.whole["uuid"],
                "name": "NVIDIA L40S",
                "memory_mb": 46068,
                "utilization": extra.get("utilization", 0),
                "memory_utilization": 7,
                # os.getpid(): a GPU process in no gpuhub container (not attributed to anyone)
                "processes": procs("bob")
                + ([{"pid": os.getpid(), "used_bytes": 12345}] if pids.get("bob") else []),
            },
            {
                "uuid": s.mig_gpu["uuid"],
                "name": "NVIDIA H100 80GB HBM3",
                "memory_mb": 81559,
                "mig": [
                    {
                        "uuid": _mig(s.tag, 0),
                        "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                        "memory_mb": 9856,
                        "slices": 1,
                        "processes": procs("alice"),
                    },
                    {
                        "uuid": _mig(s.tag, 1),
                        "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                        "memory_mb": 40192,
                        "slices": 3,
                        "processes": [],
                    },
                ],
            },
        ]
    }
    tmp = s.nvml_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, s.nvml_file)


def _by_user(result: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for r in result:
        found.setdefault(r["metric"].get("user", ""), []).append(r)
    return found


def test_prometheus_has_each_users_gpu_memory_on_the_right_container(stack):
    prom = stack.prom
    expr = f'sum by (user, gpu_uuid, mig_uuid) (gpuhub_gpu_user_memory_used_bytes{{node="{stack.node}"}})'
    result = _wait(
        "per-user GPU memory in Prometheus",
        lambda: (r := prom.query(expr)) and {"alice", "bob"} <= set(_by_user(r)) and r,
    )
    by_user = _by_user(result)
    assert set(by_user) == {"alice", "bob"}  # carol has no process; the test process is nobody's
    alice, bob = by_user["alice"][0], by_user["bob"][0]
    alice_unit = stack.containers["alice"].labels["org.gpuhub.unit"]
    assert alice_unit == _mig(stack.tag, 0)
    assert float(alice["value"][1]) == 2 * GiB
    assert alice["metric"]["mig_uuid"] == alice_unit and alice["metric"]["gpu_uuid"] == stack.mig_gpu["uuid"]
    assert float(bob["value"][1]) == 1.5 * GiB  # two processes in bob's container
    assert (
        bob["metric"]["gpu_uuid"] == stack.whole["uuid"] and bob["metric"].get("mig_uuid", "") == ""
    )  # Prometheus drops empty labels
    # the container each user's series came from is that user's container
    info = prom.query(f'gpuhub_gpu_server_info{{node="{stack.node}"}}')
    containers = {r["metric"]["user"]: r["metric"]["container"] for r in info}
    assert containers == {u: c.id[:12] for u, c in stack.containers.items()}
    # and the process outside any container is counted, but as nobody's
    other = prom.query(f'gpuhub_gpu_unattributed_processes{{node="{stack.node}"}}')
    assert [float(r["value"][1]) for r in other] == [1.0]


def test_activity_endpoint_lists_every_server_for_the_culler(stack):
    doc = requests.get(stack.agent_url + "/api/activity", headers=stack.agent_headers, timeout=10).json()
    assert doc["node"] == stack.node and isinstance(doc["time"], float)
    servers = {s["user"]: s for s in doc["servers"]}
    assert set(servers) == {"alice", "bob", "carol"}
    c = stack.containers
    assert servers["alice"] == {
        "user": "alice",
        "server": "",
        "container": c["alice"].id,
        "units": [_mig(stack.tag, 0)],
        "memory_used_bytes": 2 * GiB,
        "process_count": 1,
        "utilization_percent": None,
        "mig": True,
    }
    assert servers["bob"] == {
        "user": "bob",
        "server": "",
        "container": c["bob"].id,
        "units": [stack.whole["uuid"]],
        "memory_used_bytes": 3 * GiB // 2,
        "process_count": 2,
        "utilization_percent": 42,
        "mig": False,
    }
    assert servers["carol"]["memory_used_bytes"] == 0 and servers["carol"]["process_count"] == 0
    assert (
        servers["carol"]["units"] == [_mig(stack.tag, 1)] and servers["carol"]["utilization_percent"] is None
    )


def test_agent_follows_live_changes_and_writes_dcgm_job_mapping(stack):
    write_nvml(stack, {"utilization": 9})
    _wait(
        "utilization change",
        lambda: (
            {
                s["user"]: s
                for s in requests.get(stack.agent_url + "/api/activity", headers=stack.agent_headers, timeout=5).json()["servers"]
            }["bob"]["utilization_percent"]
            == 9
        ),
        20,
    )
    # GPU 0 is the whole GPU (bob); MIG instances as <GPU index>.<GPU instance id>
    files = {p.name: p.read_text() for p in stack.jobs_dir.iterdir() if not p.name.startswith(".")}
    assert files == {"0": "bob\n", "1.0": "alice\n", "1.1": "carol\n"}
    write_nvml(stack, {"utilization": 42})


def test_exporter_reports_units_budgets_pools_and_joins_to_gpus(stack):
    prom = stack.prom
    info = _wait(
        "exporter server info", lambda: (r := prom.query("gpuhub_server_info")) and len(r) >= 3 and r
    )
    by_user = {r["metric"]["user"]: r["metric"] for r in info}
    assert by_user["alice"]["unit"] == _mig(stack.tag, 0)
    assert by_user["alice"]["mig_uuid"] == _mig(stack.tag, 0)
    assert by_user["alice"]["gpu_uuid"] == stack.mig_gpu["uuid"]
    assert by_user["alice"]["profile"] == "mig-1g-10gb" and by_user["alice"]["pool"] == "mig-1g.10gb"
    assert by_user["bob"]["gpu_uuid"] == stack.whole["uuid"] and by_user["bob"].get("mig_uuid", "") == ""
    assert "dave" not in by_user  # refused: holds nothing, so no per-user series
    # the _info series joins the exporter's users to the agent's memory by GPU
    joined = prom.query(
        "sum by (user) (gpuhub_gpu_user_memory_used_bytes * on (user, server, mig_uuid) group_left (profile) "
        'gpuhub_server_info{mig_uuid!=""})'
    )
    assert {r["metric"]["user"]: float(r["value"][1]) for r in joined} == {"alice": 2 * GiB}
    left = {
        r["metric"]["user"]: float(r["value"][1]) for r in prom.query("gpuhub_user_gpu_budget_left_seconds")
    }
    assert set(left) == {"alice", "bob", "carol"}
    assert all(0 < v < 10 * 3600 for v in left.values()), left
    free = {r["metric"]["pool"]: float(r["value"][1]) for r in prom.query("gpuhub_pool_free_units")}
    assert free == {"gpu": 0.0, "mig-1g.10gb": 0.0, "mig-3g.40gb": 0.0}
    refused = prom.query('gpuhub_spawn_refusals_total{reason="gpu-unavailable"}')
    assert refused and float(refused[0]["value"][1]) >= 1
    assert prom.query('gpuhub_queue_length{pool="mig-1g.10gb"}')


def test_the_gpu_hub_charts_come_from_prometheus_when_configured(stack):
    """metrics.prometheus_url (GPUHUB_PROMETHEUS_URL): the admin page's units held per pool are
    Prometheus's samples of the exporter's gauge, as Prometheus itself answers them."""
    hub = stack.hub
    r = hub.api("POST", "/users/boss/tokens", json={"note": "charts"})
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"token {r.json()['token']}"}
    # the three servers' units, sampled by Prometheus (every second here)
    _wait("Prometheus has the units held",
          lambda: sum(float(x["value"][1]) for x in stack.prom.query("sum by (pool) (gpuhub_pool_held_units)")) == 3)

    def charts():
        r = requests.get(hub.url + "/services/gpuhub-admin/api/charts", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    got = _wait("the charts drawn from Prometheus", lambda: (c := charts())["held"] == {
        "gpu": 1, "mig-1g.10gb": 1, "mig-3g.40gb": 1} and c)
    assert got["source"] == "prometheus" and not got["note"], got["note"]
    assert f"Prometheus (http://127.0.0.1:{stack.prom.port})" in requests.get(
        hub.url + "/services/gpuhub-admin/charts", headers=headers, timeout=30).text
    # Prometheus gone: said on the page, drawn from the ledger (the same three units)
    stack.prom.proc.send_signal(19)  # SIGSTOP: it does not answer within the charts' timeout
    try:
        got = charts()
    finally:
        stack.prom.proc.send_signal(18)  # SIGCONT
    assert got["source"] == "ledger" and "did not answer" in got["note"], got
    assert got["held"] == {"gpu": 1, "mig-1g.10gb": 1, "mig-3g.40gb": 1}


def _exporter_token(hub: HubProcess) -> str:
    pids = [p for p in _children(hub.proc.pid) if b"hub_services.exporter" in _cmdline(p)]
    assert len(pids) == 1, pids
    env = dict(
        item.split("=", 1) for item in Path(f"/proc/{pids[0]}/environ").read_text().split("\0") if "=" in item
    )
    return env["JUPYTERHUB_API_TOKEN"]


def test_exporter_role_is_read_only_and_its_metrics_need_read_metrics(stack):
    hub = stack.hub
    token = _exporter_token(hub)
    api = hub.url + "/hub/api"
    h = {"Authorization": f"token {token}"}
    assert requests.get(api + "/users?state=active", headers=h, timeout=10).status_code == 200
    assert requests.get(api + "/groups", headers=h, timeout=10).status_code == 200
    assert (
        requests.post(api + "/users", json={"usernames": ["mallory"]}, headers=h, timeout=10).status_code
        == 403
    )
    assert requests.delete(api + "/users/bob/server", headers=h, timeout=10).status_code in (403, 404)
    assert requests.post(api + "/users/bob/tokens", json={}, headers=h, timeout=10).status_code in (403, 404)
    assert requests.get(api + "/users/bob/tokens", headers=h, timeout=10).status_code in (403, 404)
    assert requests.get(hub.url + "/hub/metrics", headers=h, timeout=10).status_code == 403
    assert hub.user("bob")["servers"], "the exporter's token must not have stopped bob's server"
    url = hub.url + "/services/gpuhub-exporter/metrics"
    assert requests.get(url, timeout=10).status_code == 403
    # the test's own service token has many scopes, but not read:metrics
    assert requests.get(url, headers={"Authorization": f"Bearer {hub.token}"}, timeout=10).status_code == 403
    ok = requests.get(url, headers={"Authorization": f"Bearer {stack.prom_token}"}, timeout=10)
    assert ok.status_code == 200 and "gpuhub_server_info" in ok.text


# ---- the dashboards ----------------------------------------------------------------------

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    doc = json.loads(path.read_text())
    found = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    found.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return found


def grafana_vars(expr: str, values: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"no test value for ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def test_every_dashboard_expression_returns_data(stack):
    prom = stack.prom
    values = {"__rate_interval": "5m", "__range": "1h", "__interval": "15s", "user": "bob"}
    exprs = [(f.name, t, e) for f in sorted(DASHBOARDS.glob("*.json")) for t, e in dashboard_exprs(f)]
    assert len(exprs) >= 15 and {f for f, _, _ in exprs} == {"gpuhub-overview.json", "gpuhub-user.json"}
    # wait for the newest series (the agent's and exporter's) to be scraped a few times
    _wait(
        "hub metrics scraped",
        lambda: prom.query("gpuhub_queue_length") and prom.query("gpuhub_server_idle_seconds"),
    )
    empty = []
    for name, title, expr in exprs:
        result = prom.query(grafana_vars(expr, values))
        numbers = [float(r["value"][1]) for r in result]
        if not numbers or all(math.isnan(v) for v in numbers):
            empty.append(f"{name} / {title}: {expr} -> {result}")
    assert not empty, "\n".join(empty)
    # the per-user dashboard's variable offers every user holding something
    users = requests.get(
        prom.url + "/api/v1/label/user/values", params={"match[]": "gpuhub_server_info"}, timeout=10
    ).json()["data"]
    assert set(users) == {"alice", "bob", "carol"}


def test_deploy_prometheus_configs_are_valid(tmp_path):
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not os.path.exists(promtool):
        unavailable("promtool (Debian's prometheus package) is not installed")
    token = tmp_path / "token"
    token.write_text("x" * 32)
    for name in ("prometheus.yml", "prometheus-single-host.yml"):
        text = (REPO / "deploy" / "prometheus" / name).read_text()
        # every token file the config names (secrets on a real deployment) exists here
        files = set(re.findall(r"credentials_file:\s*(\S+)", text))
        assert files, "the deployed config scrapes with no token at all"
        for f in files:
            text = text.replace(f, str(token))
        path = tmp_path / name
        path.write_text(text)
        r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
