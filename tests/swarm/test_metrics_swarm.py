"""Per-user GPU metrics across the nodes of a real swarm (tests/support/swarm_rig.py).

The node agent image (images/build.sh agent) runs as the global service of
deploy/swarm/node-agent.yml, deployed with the manager's own `docker stack deploy`; a real
Prometheus (Debian's package) on the host finds the agents with the `gpuhub-node-agent` job of
deploy/prometheus/prometheus.yml (only its engine socket, refresh interval and the path of the
token file changed); a real hub with GPUSwarmSpawner places three users' servers on three
workers.  The agents need the bearer token of the swarm secret `gpuhub-agent-token`, as
deployed: anonymous requests are refused, Prometheus scrapes with the token.

FAKE: NVML.  Each worker gets a JSON file (tests/support/fakes/fake_nvml_file.py) whose GPUs are that
worker's fake units and whose processes are the real PIDs of the users' server containers as the
worker's dockerd reports them (``State.Pid``, the node's PID namespace).  The agent reads those
PIDs through the node's /proc, bind-mounted at /host/proc, as it would on a GPU machine.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
import requests
import yaml
from needs import unavailable
from promserver import PROMETHEUS, PrometheusServer
from swarm_rig import SwarmRig, fake_migs, fake_whole_gpus
from test_swarm_spawner import _services, _wait

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

REPO = Path(__file__).resolve().parents[2]
AGENT_IMAGE = os.environ.get("GPUHUB_AGENT_IMAGE", "gpuhub/node-agent:latest")
STACK = "gpuhub-agent-test"
AGENT_PORT = 9469  # published in host mode by deploy/swarm/node-agent.yml
NODE_DIR = "/opt/gpuhub-test"  # on each node, bind-mounted read-only into the agent task
GiB = 1024**3
GPU_WORKERS = ["w-gpu", "w-mig", "w-shared"]  # the GPU workers of the rig (tests/swarm/conftest.py)
SHARED_GPU = "GPU-5a5a0000-0000-4000-8000-000000000001"  # w-shared's GPU, as conftest.py advertises it

PROFILES = [
    {"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"},
    {"slug": "mig", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb"},
    {"slug": "shared", "display_name": "Shared GPU", "pool": "shared"},
]
#: user -> (profile, the worker that holds that pool, GPU memory the fake NVML gives its server)
USERS = {
    "alice": ("gpu", "w-gpu", 3 * GiB),
    "bob": ("mig", "w-mig", 2 * GiB),
    "carol": ("shared", "w-shared", GiB),
}

# the agent task reads the FAKE NVML file; everything else is the committed stack file
TEST_OVERRIDE = {
    "version": "3.8",
    "services": {
        "node-agent": {
            "environment": {
                "PYTHONPATH": NODE_DIR,
                "GPUHUB_NVML_MODULE": "fakes.fake_nvml_file",
                "GPUHUB_FAKE_NVML_FILE": f"{NODE_DIR}/nvml.json",
            },
            "volumes": [{"type": "bind", "source": NODE_DIR, "target": NODE_DIR, "read_only": True}],
        }
    },
}


def nvml_doc(worker: str, procs: dict[str, list[tuple[int, int]]]) -> dict:
    """The FAKE NVML of ``worker`` (its rig units), with ``procs``: unit UUID -> [(pid, bytes)]."""
    p = lambda uuid: [{"pid": pid, "used_bytes": used} for pid, used in procs.get(uuid, [])]  # noqa: E731
    if worker == "w-gpu":
        gpus = [
            {"uuid": u, "name": "NVIDIA L40S", "memory_mb": 46068, "utilization": 30, "processes": p(u)}
            for u in fake_whole_gpus("aa", 2)
        ]
    elif worker == "w-mig":
        gpus = [
            {
                "uuid": "GPU-bbbb0000-0000-4000-8000-000000000000",
                "name": "NVIDIA A100-SXM4-40GB",
                "memory_mb": 40960,
                "mig": [
                    {
                        "uuid": u,
                        "name": "NVIDIA A100-SXM4-40GB MIG 1g.10gb",
                        "memory_mb": 9856,
                        "slices": 1,
                        "gpu_instance_id": i,
                        "processes": p(u),
                    }
                    for i, u in enumerate(fake_migs("bb", 3))
                ],
            }
        ]
    else:
        gpus = [
            {
                "uuid": SHARED_GPU,
                "name": "NVIDIA L4",
                "memory_mb": 23034,
                "utilization": 5,
                "processes": p(SHARED_GPU),
            }
        ]
    return {"gpus": gpus}


def _get(url: str, token: str | None) -> requests.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.get(url, headers=headers, timeout=5)
    except requests.RequestException:
        return None


def _put_json(node, path: str, doc: dict) -> None:
    # put_archive replaces the file: the agent's fake NVML sees a new mtime and reads it again
    node.put_file(path, json.dumps(doc))


def _label_gpu_nodes(rig: SwarmRig, names: list[str], on: bool) -> None:
    rig.update_node(names, labels={"gpuhub.gpu": "true" if on else None})


def _agent_tasks(rig: SwarmRig) -> dict[str, dict]:
    """node hostname -> running task of the agent service."""
    client = rig.manager_client()
    try:
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
        services = client.services.list(filters={"label": f"com.docker.stack.namespace={STACK}"})
        return {
            nodes[t["NodeID"]]: t
            for s in services
            for t in s.tasks()
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        }
    finally:
        client.close()


def agent_prometheus(workdir: Path, manager_url: str, token: str) -> PrometheusServer:
    """Debian's Prometheus on the host running the committed agent job, pointed at the rig's
    manager (its engine's unix socket, served into a host directory, instead of
    /var/run/docker.sock) with a 2 s refresh, and the agents' token in a file of its own instead
    of the swarm secret's /run/secrets/gpuhub-agent-token."""
    committed = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in committed["scrape_configs"] if j["job_name"] == "gpuhub-node-agent")
    for sd in job["dockerswarm_sd_configs"]:
        sd["host"] = manager_url
        sd["refresh_interval"] = "2s"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/gpuhub-agent-token"}
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "agent-token"
    token_file.write_text(token + "\n")
    job["authorization"]["credentials_file"] = str(token_file)
    return PrometheusServer(workdir, [job])


@pytest.fixture(scope="module")
def agent_token(rig: SwarmRig):
    """The swarm secret gpuhub-agent-token that node-agent.yml expects, made as the README says."""
    token = secrets.token_hex(32)
    manager = rig.manager
    manager.sh("docker secret rm gpuhub-agent-token >/dev/null 2>&1 || true")
    manager.sh('printf %s "$AGENT_TOKEN" | docker secret create gpuhub-agent-token -', env={"AGENT_TOKEN": token})
    yield token
    for _ in range(30):  # in use until the stack's tasks are gone
        if manager.sh("docker secret rm gpuhub-agent-token", check=False)[0] == 0:
            break
        time.sleep(1)


@pytest.fixture(scope="module")
def agents(rig: SwarmRig, docker_client: docker.DockerClient, agent_token: str):
    """The agent stack deployed on the rig's GPU workers (fake NVML files in place, no processes)."""
    missing = []
    if not os.path.exists(PROMETHEUS):
        missing.append("Debian's prometheus package (deploy/setup-host.sh installs it)")
    try:
        docker_client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        missing.append(f"image {AGENT_IMAGE}: run images/build.sh agent")
    if missing:
        unavailable("missing " + "; ".join(missing))
    workers = list(GPU_WORKERS)
    rig.load_image(AGENT_IMAGE, workers)
    fakes = REPO / "tests" / "support" / "fakes"
    for name in workers:
        node = rig.nodes[name]
        for f in ("__init__.py", "fake_nvml.py", "fake_nvml_file.py"):
            node.put_file(f"{NODE_DIR}/fakes/{f}", (fakes / f).read_bytes())
        _put_json(node, f"{NODE_DIR}/nvml.json", nvml_doc(name, {}))
    manager = rig.manager
    manager.put_file(
        f"{NODE_DIR}/node-agent.yml", (REPO / "deploy" / "swarm" / "node-agent.yml").read_bytes()
    )
    manager.put_file(f"{NODE_DIR}/test-override.yml", yaml.safe_dump(TEST_OVERRIDE))
    _label_gpu_nodes(rig, workers, on=True)
    try:
        manager.sh(
            f"cd {NODE_DIR} && GPUHUB_AGENT_IMAGE={AGENT_IMAGE} docker stack deploy "
            f"-c node-agent.yml -c test-override.yml {STACK}"
        )
        yield workers
    except BaseException:
        for name in workers:
            print(
                name,
                rig.nodes[name].sh(
                    f"docker ps -a --filter label=com.docker.stack.namespace={STACK} "
                    "-q | xargs -r docker logs --tail 30 2>&1",
                    check=False,
                )[1],
            )
        raise
    finally:
        manager.sh(f"docker stack rm {STACK}", check=False)
        _label_gpu_nodes(rig, workers, on=False)


def test_prometheus_finds_every_agent_and_gets_each_users_gpu_memory_across_nodes(
    rig, agents, agent_token, swarm_hub, tmp_path
):
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0})
    hub.create_users(list(USERS))
    with ThreadPoolExecutor(len(USERS)) as pool:
        spawned = dict(
            zip(USERS, pool.map(lambda u: hub.spawn(u, {"profile": USERS[u][0]}, timeout=120), USERS))
        )
    assert all(r.status_code in (201, 202) for r in spawned.values()), {u: r.text for u, r in spawned.items()}
    for user in USERS:
        hub.wait_ready(user, timeout=180)

    # each server: its node, unit, container id and the PID its node's dockerd reports
    services = _services(rig, hub)
    servers = {}
    for user, (_profile, worker, used) in USERS.items():
        svc = services[user]
        assert svc["node"] == worker, (user, svc["node"])
        cid = svc["task"]["Status"]["ContainerStatus"]["ContainerID"]
        client = rig.nodes[worker].client()
        try:
            pid = client.containers.get(cid).attrs["State"]["Pid"]
        finally:
            client.close()
        servers[user] = {
            "node": worker,
            "unit": svc["labels"]["org.gpuhub.unit"],
            "cid": cid,
            "pid": pid,
            "used": used,
        }
    # every user's process sits on the device of the unit swarm gave them; on w-gpu the node's
    # PID 1 (no container of that node's engine) holds memory too, and is nobody's
    for worker in agents:
        procs: dict[str, list[tuple[int, int]]] = {}
        for s in servers.values():
            if s["node"] == worker:
                procs.setdefault(s["unit"].split("/slot-", 1)[0], []).append((s["pid"], s["used"]))
        if worker == "w-gpu":
            other = next(u for u in fake_whole_gpus("aa", 2) if u not in procs)
            procs[other] = [(1, 512 * 1024 * 1024)]
        _put_json(rig.nodes[worker], f"{NODE_DIR}/nvml.json", nvml_doc(worker, procs))

    _wait(lambda: set(_agent_tasks(rig)) == set(agents), 60, "an agent task running on every GPU worker")
    # every agent refuses anonymous requests (users' servers can reach the port) and answers
    # with the swarm secret's token
    for worker in agents:
        base = f"http://{rig.nodes[worker].ip}:{AGENT_PORT}"
        up = _wait(lambda b=base: _get(b + "/api/activity", agent_token), 60, f"the agent on {worker} answering")
        assert up.status_code == 200, (worker, up.status_code, up.text)
        for path in ("/metrics", "/api/activity"):
            for token in (None, "wrong-" + agent_token):
                r = _get(base + path, token)
                assert r.status_code == 401 and "gpuhub_gpu" not in r.text and "servers" not in r.text, (worker, path, r.text)
    prom = agent_prometheus(tmp_path / "prom", rig.manager.url, agent_token)
    try:
        # service discovery: one target per GPU worker, at <node address>:<published port>
        targets = _wait(
            lambda: (
                (t := prom.targets()) and len(t) >= len(agents) and all(x["health"] == "up" for x in t) and t
            ),
            60,
            "every agent target up",
        )
        found = {t["labels"]["instance"]: t["scrapeUrl"] for t in targets}
        assert found == {w: f"http://{rig.nodes[w].ip}:{AGENT_PORT}/metrics" for w in agents}, targets

        expr = "gpuhub_gpu_user_memory_used_bytes"
        result = _wait(
            lambda: (r := prom.query(expr)) and len(r) >= len(USERS) and r,
            60,
            "each user's GPU memory in Prometheus",
        )
        got = {r["metric"]["user"]: r for r in result}
        assert set(got) == set(USERS) and len(result) == len(USERS), result
        for user, s in servers.items():
            m = got[user]["metric"]
            assert float(got[user]["value"][1]) == s["used"], (user, got[user])
            assert m["node"] == s["node"] and m["instance"] == s["node"], m
            device = m["mig_uuid"] if user == "bob" else m["gpu_uuid"]
            assert device == s["unit"].split("/slot-", 1)[0], m
            # swarm assigns the unit after the container is defined, so the container has no
            # org.gpuhub.unit label: the agent reads it from DOCKER_RESOURCE_<KIND> (whole GPUs
            # and MIG); a shared slot's number is only in the service's label
            expected_unit = "" if "/slot-" in s["unit"] else s["unit"]
            assert m.get("unit", "") == expected_unit, m
        # the container each series came from is that user's server container, on that node
        info = prom.query("gpuhub_gpu_server_info")
        assert {r["metric"]["user"]: (r["metric"]["node"], r["metric"]["container"]) for r in info} == {
            u: (s["node"], s["cid"][:12]) for u, s in servers.items()
        }
        # the PID outside any server counted, as nobody's, on its own node only
        other = prom.query("gpuhub_gpu_unattributed_processes")
        assert [(r["metric"]["node"], float(r["value"][1])) for r in other] == [("w-gpu", 1.0)], other
        # the join Grafana uses: memory per user with the profile from the server info
        joined = prom.query(
            "sum by (user, node) (gpuhub_gpu_user_memory_used_bytes * on (node, user, server) "
            "group_left (profile) gpuhub_gpu_server_info)"
        )
        assert {(r["metric"]["user"], r["metric"]["node"]): float(r["value"][1]) for r in joined} == {
            (u, s["node"]): float(s["used"]) for u, s in servers.items()
        }
    except BaseException:
        print(prom.log_path.read_text()[-3000:])
        print(
            json.dumps(requests.get(prom.url + "/api/v1/targets?state=any", timeout=10).json(), indent=1)[
                :6000
            ]
        )
        raise
    finally:
        prom.stop()
