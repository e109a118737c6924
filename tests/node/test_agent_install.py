"""``gpuhub node agent install`` against the real Docker engine: the real agent image
(images/build.sh agent) started in the host's PID and cgroup namespaces, attributing a real
container's process to its user, and the same image in a PID namespace of its own saying that
it cannot.

FAKE: NVML only (tests/support/fakes/fake_nvml_file.py, bind-mounted with its JSON file).  The
GPU process the fake lists is the real host PID of a real "server" container (``State.Pid``), so
the agent maps it through the host's /proc/<pid>/cgroup and the engine's labels as on a GPU node.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests
from harness import free_port
from needs import unavailable
from prometheus_client.parser import text_string_to_metric_families

from gpuhub_spawner.cli import main
from gpuhub_spawner.node.agent_install import AgentContainer, install

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
AGENT_IMAGE = "gpuhub/node-agent:latest"
GPU = "GPU-7e570000-0000-4000-8000-000000000001"
TEST_LABEL = {"org.gpuhub.test": "agent-install"}
FAKE_DIR = "/opt/gpuhub-test"


@pytest.fixture
def agent_image(docker_client):
    import docker

    try:
        image = docker_client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {AGENT_IMAGE}: run images/build.sh agent")
    return image


@pytest.fixture
def created(docker_client):
    """Names of containers this test made; removed (with their logs printed) afterwards."""
    names: list[str] = []
    yield names
    import docker

    for name in names:
        try:
            c = docker_client.containers.get(name)
        except docker.errors.NotFound:
            continue
        print(name, c.status, c.logs(tail=30).decode(errors="replace"))
        c.remove(force=True)


@pytest.fixture
def server(docker_client, agent_image, created):
    """alice's "server": a long-running container with gpuhub's labels (its process is what the
    fake NVML lists, by its host PID)."""
    name = f"gpuhub-test-server-{uuid.uuid4().hex[:8]}"
    created.append(name)
    c = docker_client.containers.run(
        AGENT_IMAGE, ["-c", "import time; time.sleep(600)"], entrypoint="/opt/venv/bin/python", name=name,
        detach=True, labels={**TEST_LABEL, "org.gpuhub.user": "alice", "org.gpuhub.unit": GPU,
                             "org.gpuhub.pool": "gpu", "org.gpuhub.profile": "gpu"},
    )
    c.reload()
    return c


@pytest.fixture
def fake_nvml_dir(tmp_path, server):
    """The FAKE NVML module and its GPU file, listing the server's host PID with 1 GiB."""
    d = tmp_path / "gpuhub-test"
    shutil.copytree(REPO / "tests" / "support" / "fakes", d / "fakes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    doc = {"gpus": [{"uuid": GPU, "name": "NVIDIA L40S", "memory_mb": 46068, "utilization": 20,
                     "processes": [{"pid": server.attrs["State"]["Pid"], "used_bytes": 1 << 30}]}]}
    (d / "nvml.json").write_text(json.dumps(doc))
    return d


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "agent-token"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def fake_args(fake_dir: Path) -> list[str]:
    return [
        "--env", f"PYTHONPATH={FAKE_DIR}", "--env", "GPUHUB_NVML_MODULE=fakes.fake_nvml_file",
        "--env", f"GPUHUB_FAKE_NVML_FILE={FAKE_DIR}/nvml.json", "--volume", f"{fake_dir}:{FAKE_DIR}:ro",
        "--label", "org.gpuhub.test=agent-install",
    ]


def metrics(port: int, token: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_install_runs_the_agent_in_the_hosts_namespaces(docker_client, fake_nvml_dir, token_file, created, capsys):
    name = f"gpuhub-node-agent-test-{uuid.uuid4().hex[:8]}"
    created.append(name)
    port = free_port()
    argv = ["node", "agent", "install", "--name", name, "--port", str(port), "--runtime", "",
            "--token-file", str(token_file), "--node-name", "gpu-test", *fake_args(fake_nvml_dir)]
    assert main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "host PIDs visible, NVML up" in out, out

    host = docker_client.containers.get(name).attrs["HostConfig"]
    assert host["PidMode"] == "host" and host["CgroupnsMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert f"{token_file}:/run/secrets/gpuhub-agent-token:ro" in host["Binds"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in host["Binds"]
    assert host["PortBindings"] == {f"{port}/tcp": [{"HostIp": "", "HostPort": str(port)}]}
    assert host["ReadonlyRootfs"] is True and "no-new-privileges" in host["SecurityOpt"]

    token = token_file.read_text().strip()
    got = metrics(port, token)
    assert got["gpuhub_gpu_agent_host_pid_view"] == [({"node": "gpu-test"}, 1.0)]
    [(labels, used)] = got["gpuhub_gpu_user_memory_used_bytes"]
    assert (labels["user"], labels["gpu_uuid"], used) == ("alice", GPU, float(1 << 30))
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 401

    # install again: the container is replaced, not duplicated; remove takes it away
    old_id = docker_client.containers.get(name).id
    assert main(argv) == 0
    assert docker_client.containers.get(name).id != old_id
    assert len(docker_client.containers.list(all=True, filters={"name": f"^/{name}$"})) == 1
    assert main(["node", "agent", "remove", "--name", name]) == 0
    assert not docker_client.containers.list(all=True, filters={"name": f"^/{name}$"})


def test_the_agent_in_its_own_pid_namespace_says_so(docker_client, fake_nvml_dir, token_file, created):
    """The old deployment (a swarm service: own PID namespace, the host's /proc bind-mounted):
    the same image reports host_pid_view 0, logs what to do and refuses /api/activity (503).  (The fake NVML here does not
    hide PIDs as drivers >= 535.113 do; tests/node/test_attribution_agent.py covers that.)"""
    name = f"gpuhub-node-agent-test-{uuid.uuid4().hex[:8]}"
    created.append(name)
    port = free_port()
    spec = AgentContainer(token_file=str(token_file), port=port, runtime="", name=name, node_name="gpu-test")
    kwargs = spec.run_kwargs()
    kwargs.update(pid_mode=None, cgroupns=None, command=[*spec.command()[:2], "--host-proc", "/host/proc",
                                                         *spec.command()[4:]])
    kwargs["volumes"] = [*kwargs["volumes"], "/proc:/host/proc:ro", f"{fake_nvml_dir}:{FAKE_DIR}:ro"]
    kwargs["environment"] = {**kwargs["environment"], "PYTHONPATH": FAKE_DIR,
                             "GPUHUB_NVML_MODULE": "fakes.fake_nvml_file",
                             "GPUHUB_FAKE_NVML_FILE": f"{FAKE_DIR}/nvml.json"}
    kwargs["labels"] = {**kwargs["labels"], **TEST_LABEL}
    c = docker_client.containers.run(**kwargs)
    assert c.attrs["HostConfig"]["PidMode"] in ("", "private")
    token = token_file.read_text().strip()
    deadline = time.monotonic() + 60
    while True:
        try:
            got = metrics(port, token)
            break
        except (requests.RequestException, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert got["gpuhub_gpu_agent_host_pid_view"] == [({"node": "gpu-test"}, 0.0)]
    r = requests.get(f"http://127.0.0.1:{port}/api/activity", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    assert r.status_code == 503 and "does not see the host's PIDs" in r.json()["error"], r.text
    logs = c.logs().decode(errors="replace")
    assert "Per-user GPU attribution will be EMPTY" in logs and "PID namespace of its own" in logs, logs
    assert "gpuhub node agent install" in logs


def test_install_refuses_without_the_nvidia_runtime_or_a_token(docker_client, agent_image, token_file, tmp_path):
    """Fail closed before anything starts: no NVIDIA runtime on this engine (there is none here),
    no token file."""
    from gpuhub_spawner.node.nodecli import SetupError

    spec = AgentContainer(token_file=str(token_file), name=f"gpuhub-node-agent-test-{uuid.uuid4().hex[:8]}")
    with pytest.raises(SetupError, match="no 'nvidia' runtime: run `gpuhub node setup` first"):
        install(docker_client, spec)
    spec = AgentContainer(token_file=str(tmp_path / "absent"), runtime="", name=spec.name)
    with pytest.raises(SetupError, match="openssl rand -hex 32"):
        install(docker_client, spec)
    assert not docker_client.containers.list(all=True, filters={"name": f"^/{spec.name}$"})


def test_remove_leaves_a_container_that_is_not_an_agent_alone(docker_client, server, capsys):
    """`gpuhub node agent remove --name X` removes only a container labelled as the agent."""
    assert main(["node", "agent", "remove", "--name", server.name]) == 2
    assert "is not a gpuhub node agent" in capsys.readouterr().err
    server.reload()
    assert server.status == "running"
