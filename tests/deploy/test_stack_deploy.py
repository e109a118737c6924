"""`gpuhub deploy` on the swarm rig: a manager and one worker, DOCKER_HOST at the manager's socket.

One rig and one deploy for the module: the stack comes up healthy, the hub answers through Caddy
over HTTPS with the operator's certificate (made here by a throwaway CA that the client trusts),
HTTP redirects to HTTPS, cookies carry Secure, no secret value shows in `docker inspect`, a
container on the user network reaches the hub API and nothing of the internal services nor any
Docker API, and a second deploy changes nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from polling import wait_for
from stack_rig import start_manager
from swarm_rig import SwarmRig
from testca import TestCA

from gpuhub_spawner.deploy import stack

DOMAIN = "hub.gpuhub.test"
PUSHED = stack.IMAGES["registry"]
STACK = "gpuhub"


class _To(http.client.HTTPSConnection):
    """HTTPS to ``ip`` for DOMAIN (SNI and Host are the name; no DNS needed)."""

    def __init__(self, ip: str, context: ssl.SSLContext) -> None:
        super().__init__(DOMAIN, 443, timeout=15, context=context)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path, headers={"Host": DOMAIN})
    response = conn.getresponse()
    response.read()
    return response


@pytest.fixture(scope="module")
def rig(docker_client: docker.DockerClient) -> Iterator[SwarmRig]:
    rig = SwarmRig(docker_client, prefix=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-rig-stack"))
    try:
        start_manager(rig, STACK)
        # what `gpuhub node setup --registry` writes on a GPU node (tests/deploy/test_node_registry.py)
        worker = rig.start_node("worker", 1, daemon={"insecure-registries": [f"{rig.manager.ip}:5000"]})
        rig.not_in_swarm = gpuhub_deploy(Path("/nonexistent.yaml"), worker.url, check_config=False)
        rig.join(worker)
        rig.wait_nodes_ready(["manager", "worker"])
        yield rig
    finally:
        rig.teardown()


def gpuhub_deploy(config: Path, docker_host: str, *args: str, check_config: bool = True) -> subprocess.CompletedProcess:
    if not check_config:  # a valid file, so that the engine is what is refused
        config = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpuhub-deploy-{os.getpid()}.yaml"
        config.write_text(yaml.safe_dump({"deploy": {"public_url": f"https://{DOMAIN}", "tls": {"mode": "internal"},
                                                     "secrets_dir": str(config) + ".secrets"}}))
    env = {**os.environ, "DOCKER_HOST": docker_host}
    return subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", "deploy", "--config", str(config),
                           "--timeout", "420", *args], env=env, capture_output=True, text=True, timeout=1200)


def deploy(config: Path, rig: SwarmRig, *args: str) -> subprocess.CompletedProcess:
    return gpuhub_deploy(config, rig.manager.url, *args)


@pytest.fixture(scope="module")
def deployed(rig: SwarmRig, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("stack")
    ca = TestCA(folder / "ca")
    leaf = ca.leaf("hub", [DOMAIN])
    config = folder / "gpuhub.yaml"
    config.write_text(yaml.safe_dump({
        "sign_in": {"admin_users": ["prof"]},
        "profiles": [{"slug": "cpu", "display_name": "CPU only", "pool": None}],
        # a small image the manager already holds, to push (a real one is 1-13 GB)
        "images": {"allowed": [PUSHED]},
        "deploy": {
            "public_url": f"https://{DOMAIN}",
            "tls": {"mode": "files", "cert_file": str(leaf.cert), "key_file": str(leaf.key)},
            "secrets_dir": str(folder / "secrets"),
            "stack_name": STACK,
            "push_images": [PUSHED],
        },
    }))
    dry = deploy(config, rig, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    client = rig.manager_client()
    assert "would create swarm secret gpuhub_crypt_key_new" in dry.stdout and "would run: docker stack deploy" in dry.stdout
    assert not (folder / "secrets").exists() and not client.secrets.list() and not client.services.list()
    done = deploy(config, rig)
    if done.returncode != 0:
        for s in client.services.list():
            print(f"---- {s.name} ----\n" + "".join(
                line.decode(errors="replace") for line in s.logs(stdout=True, stderr=True, tail=40)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield {"ca": ca, "leaf": leaf, "config": config, "secrets": folder / "secrets", "out": done.stdout,
           "client": client}
    client.close()


def test_deploy_refuses_an_engine_that_is_no_swarm_manager(deployed, rig):
    assert rig.not_in_swarm.returncode == 2
    assert "this engine is not in a swarm: run docker swarm init first" in rig.not_in_swarm.stderr
    worker = gpuhub_deploy(Path("/nonexistent.yaml"), rig.nodes["worker"].url, check_config=False)
    assert worker.returncode == 2 and "this node is not a manager" in worker.stderr
    assert "Traceback" not in rig.not_in_swarm.stderr + worker.stderr


def test_deploy_says_what_to_do_next(deployed, rig):
    out = deployed["out"]
    assert f"the hub answers at https://{DOMAIN}/" in out
    assert "worker join token (keep it private): SWMTKN-" in out
    assert f"gpuhub node setup --manager {rig.manager.ip}:2377 --join-token-file FILE" in out
    assert f"--registry {rig.manager.ip}:5000" in out
    for name in ("crypt_key", "db_password", "prometheus_token", "agent_token"):
        path = deployed["secrets"] / name
        assert oct(path.stat().st_mode & 0o777) == "0o600", name
        assert path.read_text().strip() not in out  # generated, never printed
    assert oct(deployed["secrets"].stat().st_mode & 0o777) == "0o700"


def test_the_hub_waited_for_its_database_instead_of_failing_on_it(deployed):
    """The hub and PostgreSQL start together: the hub waits for the database (storage/dbwait.py);
    no hub task of the first deploy exited on "Failed to connect to db"."""
    client = deployed["client"]
    tasks = client.api.tasks(filters={"service": "gpuhub_hub"})
    failed = [t["Status"].get("Err") or t["Status"]["State"] for t in tasks
              if t["Status"]["State"] in ("failed", "rejected")]
    assert not failed, failed
    container = client.containers.list(filters={"label": "com.docker.swarm.service.name=gpuhub_hub"})[0]
    assert "Failed to connect to db" not in container.logs().decode(errors="replace")


def test_hub_answers_over_https_with_secure_cookies_and_http_redirects(deployed, rig):
    context = ssl.create_default_context(cafile=str(deployed["ca"].cert))
    response = _get(_To(rig.manager.ip, context), "/hub/login")
    assert response.status == 200
    cookies = response.headers.get_all("Set-Cookie") or []
    assert cookies, "the login page sets the _xsrf cookie"
    assert all("secure" in c.lower() for c in cookies), cookies
    assert response.headers.get("Strict-Transport-Security")
    plain = _get(http.client.HTTPConnection(rig.manager.ip, 80, timeout=15), "/hub/login")
    assert plain.status in (301, 308)
    assert plain.headers["Location"] == f"https://{DOMAIN}/hub/login"
    with pytest.raises(ssl.SSLCertVerificationError):  # an untrusted client refuses the certificate
        _get(_To(rig.manager.ip, ssl.create_default_context()), "/hub/login")


def test_no_secret_value_in_docker_inspect(deployed):
    client = deployed["client"]
    values = [p.read_text().strip() for p in deployed["secrets"].iterdir()]
    values.append(deployed["leaf"].key.read_text().split("-----")[2].strip()[:64])
    inspected = json.dumps([s.attrs for s in client.services.list()] +
                           [c.attrs for c in client.containers.list(all=True)])
    assert f"{STACK}_hub" in inspected
    for value in values:
        assert len(value) >= 16 and value not in inspected


# Probes speak each protocol: this machine's egress accepts any TCP connection to an address it
# does not route locally, so an open socket alone proves nothing.
PROBE = r"""
import json, os, socket, sys, urllib.request
def pg(host):
    try:
        with socket.create_connection((host, 5432), timeout=3) as s:
            s.settimeout(3)
            s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
            return "postgres" if s.recv(1) in (b"S", b"N") else "no postgres"
    except OSError as e:
        return type(e).__name__
def http(method, url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(2000).decode(errors="replace")
    except OSError as e:
        return type(e).__name__, ""
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except OSError as e:
        return type(e).__name__
if sys.argv[1] == "pg":
    print(json.dumps({"db": pg("db")}))
    sys.exit()
manager, db_ip, gateway = sys.argv[1:4]
out = {"hub_api": http("GET", "http://gpuhub-hub:8081/hub/api")[0], "db_name": pg("db"), "db_ip": pg(db_ip),
       "registry_pull": http("GET", f"http://{manager}:5000/v2/")[0],
       "registry_push": http("POST", f"http://{manager}:5000/v2/probe/blobs/uploads/")[0],
       "proxy_api": tcp("gpuhub-hub", 8001), "proxy_public": tcp("gpuhub-hub", 8000),
       "docker_apis": sorted({"docker" if "ApiVersion" in http("GET", f"http://{h}:{p}/version")[1] else "none"
                              for h in (manager, gateway) for p in (2375, 2376)}),
       "socket": os.path.exists("/var/run/docker.sock")}
print(json.dumps(out))
"""


def test_user_network_reaches_the_hub_api_and_nothing_internal(deployed, rig):
    client = deployed["client"]
    db = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_db"})[0]
    db_ip = db.attrs["NetworkSettings"]["Networks"][f"{STACK}_internal"]["IPAddress"]
    users = client.networks.get(f"{STACK}_users")
    gateway = users.attrs["IPAM"]["Config"][0]["Gateway"]
    hub = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub"})[0]
    code, out = hub.exec_run(["python3", "-c", PROBE, "pg"])
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"db": "postgres"}, out  # the probe's control
    probe = client.containers.run(stack.IMAGES["hub"], entrypoint=["python3", "-c", PROBE],
                                  command=[rig.manager.ip, db_ip, gateway], network=f"{STACK}_users",
                                  detach=True, labels={"org.gpuhub.test": "stack-probe"})
    try:
        assert probe.wait(timeout=120)["StatusCode"] == 0, probe.logs().decode()
        seen = json.loads(probe.logs(stderr=False).decode().strip().splitlines()[-1])
    finally:
        probe.remove(force=True)
    assert seen["hub_api"] == 200  # the control: this network does reach the hub API
    assert seen["registry_pull"] == 200  # and the nodes' pull path
    assert seen["db_name"] == "gaierror" and seen["db_ip"] != "postgres"
    assert seen["registry_push"] == 405  # the registry is read-only there
    assert seen["proxy_api"] != "open" and seen["proxy_public"] != "open"
    assert seen["docker_apis"] == ["none"] and seen["socket"] is False


def test_a_worker_pulls_the_pushed_image_from_the_stacks_registry(deployed, rig):
    assert f"pushing {PUSHED} into the stack's registry" in deployed["out"]
    worker = rig.nodes["worker"].client(timeout=300)
    try:
        pulled = worker.images.pull(f"{rig.manager.ip}:5000/{PUSHED.split(':')[0]}", tag="latest")
        assert pulled.id == deployed["client"].images.get(PUSHED).id
    finally:
        worker.close()
    assert not [c for c in deployed["client"].containers.list(all=True) if "registry-push" in c.name]


def test_a_dry_run_with_grafana_names_its_provisioning_configs_and_creates_nothing(deployed, rig):
    """`deploy.grafana_image` on the documented command: Grafana's files of deploy/grafana become
    swarm configs named by digest beside the hub's gpuhub.yaml (Grafana itself is never pulled
    here: no registry is reachable, so only the dry run goes to the engine)."""
    from gpuhub_spawner.deploy import grafana

    doc = yaml.safe_load(deployed["config"].read_text())
    doc["deploy"]["grafana_image"] = "grafana/grafana-oss:11.3.0"
    config = deployed["config"].with_name("gpuhub-grafana.yaml")
    config.write_text(yaml.safe_dump(doc))
    client = deployed["client"]
    configs = sorted(c.name for c in client.configs.list())
    done = deploy(config, rig, "--dry-run")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name, (source, _target) in grafana.FILES.items():
        assert f"would create swarm config {STACK}_{name}_" in done.stdout and f"({source})" in done.stdout, name
    assert f"would create swarm secret {STACK}_{grafana.SECRET}_" in done.stdout
    assert sorted(c.name for c in client.configs.list()) == configs  # a dry run creates nothing
    assert not [s for s in client.services.list() if s.name == f"{STACK}_grafana"]


def test_second_deploy_changes_nothing(deployed, rig):
    client = deployed["client"]
    secrets = sorted(s.name for s in client.secrets.list())
    hub = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub"})
    done = deploy(deployed["config"], rig)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "creating swarm secret" not in done.stdout and "generated" not in done.stdout
    assert sorted(s.name for s in client.secrets.list()) == secrets
    again = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub"})
    assert [c.id for c in again] == [c.id for c in hub]  # the hub was not restarted


def test_a_service_that_is_not_healthy_is_named_with_its_error(deployed):
    """The bounded wait of `gpuhub deploy`, on services of the rig's swarm that never get healthy."""
    from docker.types import Healthcheck

    from gpuhub_spawner.deploy.deploycli import DeployError, wait_healthy

    client = deployed["client"]
    made = [
        client.services.create(stack.IMAGES["registry"], name="stuck_web", constraints=["node.role == manager"],
                               healthcheck=Healthcheck(test=["CMD", "bash", "-c", "echo nothing on 5000; exit 1"],
                                                       interval=1_000_000_000, retries=1, start_period=0)),
        client.services.create("gpuhub/no-such-image:latest", name="stuck_img", constraints=["node.role == manager"]),
    ]
    try:
        with pytest.raises(DeployError) as e:
            wait_healthy(client, "stuck", ["img", "web"], timeout=20)
    finally:
        for service in made:
            service.remove()
    lines = str(e.value).splitlines()
    assert lines[0].startswith("img is not healthy after 20 s (") and "No such image" in lines[0], lines
    # its health check's output, or the error of the task swarm replaced for being unhealthy
    assert lines[1].startswith("web is not healthy after 20 s (") and (
        "nothing on 5000" in lines[1] or "unhealthy" in lines[1]), lines
    assert "docker service ps stuck_<service>" in lines[2]


def test_a_new_certificate_is_a_new_secret_and_the_old_one_goes(deployed, rig):
    client = deployed["client"]
    before = {s.name for s in client.secrets.list() if s.name.startswith(f"{STACK}_tls_cert_")}
    fresh = deployed["ca"].leaf("hub", [DOMAIN])  # the same paths, a new certificate and key
    assert fresh.cert == deployed["leaf"].cert
    done = deploy(deployed["config"], rig)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = {s.name for s in client.secrets.list() if s.name.startswith(f"{STACK}_tls_cert_")}
    assert len(after) == 1 and after != before  # a rotation never clashes with the running secret
    assert f"removed {before.pop()} (an earlier version)" in done.stdout
    context = ssl.create_default_context(cafile=str(deployed["ca"].cert))
    sock = socket.create_connection((rig.manager.ip, 443), timeout=15)
    with context.wrap_socket(sock, server_hostname=DOMAIN) as tls:
        served = tls.getpeercert(binary_form=True)
    first = fresh.cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    assert served == ssl.PEM_cert_to_DER_cert(first)  # caddy serves the new one


def test_the_hub_reaches_a_workers_node_agent_found_on_the_swarm_with_the_stacks_token(deployed, rig):
    """The culler in the hub asks the node agents about servers on their nodes (kernel probe,
    notice, GPU activity): the hub is on the edge network, reaches the agent at the address
    the culler reads off the swarm (hub_services/culler/swarm.py), and holds the agent token
    `gpuhub deploy` generated, which the node's agent is installed with."""
    from gpuhub_spawner.node.agent_install import AgentContainer
    from hub_services.culler.swarm import swarm_view

    worker, image = rig.nodes["worker"], os.environ.get("GPUHUB_AGENT_IMAGE", "gpuhub/node-agent:latest")
    rig.load_image(image, ["worker"])
    spec = AgentContainer(image=image, runtime="")  # the rig's nodes have no NVIDIA runtime
    rig.run_node_agent(["worker"], spec, (deployed["secrets"] / "agent_token").read_text())
    client = deployed["client"]
    rig.update_node("worker", labels={"gpuhub.gpu": "true"})
    try:
        [url] = swarm_view(client.api.nodes(), [], [], STACK).gpu_agents
        hub = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub"})[0]
        code, out = hub.exec_run(["python3", "-c", AGENT_CHECK, url + "/api/activity"])
        assert code == 0 and out.decode().strip().endswith("200"), out.decode()[-2000:]
    finally:
        worker.sh(f"docker rm -f {spec.name}", check=False)
        rig.update_node("worker", labels={"gpuhub.gpu": None})


#: run in the hub's container: GET argv[1] with the stack's agent token, retried while the agent starts
AGENT_CHECK = """
import sys, time, urllib.request as u
token = open("/run/secrets/agent_token").read().strip()
for _ in range(60):
    try:
        print(u.urlopen(u.Request(sys.argv[1], headers={"Authorization": "Bearer " + token}), timeout=5).status)
        break
    except Exception as e:
        print(e)
        time.sleep(1)
"""


#: run on the user network (bash, no HTTP client needed): the hub API's status line by its alias
HUB_API_CHECK = (f"exec 3<>/dev/tcp/{STACK}-hub/8081 && printf 'GET /hub/api HTTP/1.0\\r\\n\\r\\n' >&3 "
                 "&& timeout 5 head -1 <&3")


def test_a_server_on_a_worker_reaches_the_hub_api_again_after_the_hub_container_is_killed(deployed, rig):
    """A user's server on a GPU worker asks the hub API (by the alias ``<stack>-hub`` on the user
    network) to check every request's token: after swarm replaces a killed hub container, at a new
    address, the running server must reach the new one, or its user is locked out of JupyterLab."""
    client = deployed["client"]
    service = client.services.create(
        f"{rig.manager.ip}:5000/{PUSHED}", command=["sleep", "infinity"], name="hub-api-probe",
        networks=[f"{STACK}_users"], constraints=["node.hostname==worker"], labels={"org.gpuhub.test": "probe"})
    worker = rig.nodes["worker"].client(timeout=60)
    try:
        def probe() -> str:
            found = worker.containers.list(filters={"label": "com.docker.swarm.service.name=hub-api-probe"})
            if not found:
                return "no probe container yet"
            return found[0].exec_run(["bash", "-c", HUB_API_CHECK]).output.decode(errors="replace").strip()

        assert wait_for(lambda: probe().startswith("HTTP/1.1 200"), 120, "the probe on the worker reaching the hub")
        old = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub"})[0]
        old.kill()
        wait_for(lambda: [c for c in client.containers.list(filters={
            "label": f"com.docker.swarm.service.name={STACK}_hub", "health": "healthy"}) if c.id != old.id],
            240, "swarm's new hub container healthy")
        seen: list[str] = []
        t0 = time.monotonic()
        try:
            wait_for(lambda: seen.append(probe()) or seen[-1].startswith("HTTP/1.1 200"), 60,
                     "the worker's probe reaching the new hub")
        except AssertionError as e:
            raise AssertionError(f"{e}; the probe said: {seen[-3:]}") from None
        print(f"the worker reached the new hub {time.monotonic() - t0:.1f}s after it was healthy, "
              f"after {len(seen)} tries: {seen[:3]}")
    finally:
        service.remove()
        worker.close()
