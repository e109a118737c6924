"""The stack's images (``images/build.sh stack``) in a real Docker engine, one container each.

- gpuhub/hub: alone (sqlite, the swarm spawner, no engine socket) it answers /hub/health through
  its proxy and its own HEALTHCHECK passes; a ``NAME_FILE`` naming a secret file gives the hub
  ``NAME`` and the value never reaches ``docker logs``; a bad gpuhub.yaml stops it with exit 2 and
  the line ``gpuhub config check`` prints in the same image.
- gpuhub/postgres: initdb with the secret's password; that password signs in over the network,
  a wrong one and the superuser do not.
- gpuhub/registry: a writable and a read-only registry on one volume: a push to the first is
  pulled from the second, which refuses a push.
- gpuhub/caddy: with an operator's certificate (made here with openssl) it serves HTTPS to an
  upstream in this process (forwarded headers, HSTS, a websocket upgrade), redirects plain HTTP
  to HTTPS, and refuses a wrong setting in one line.
- gpuhub/prometheus: ready, with gpuhub's rules loaded and the hub's jobs aimed at the stack's
  ``hub`` service.

The images are built by ``images/build.sh stack`` (deploy/gpuhub-test does it, cached): where one
is missing the test skips, and fails under CI.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import requests
from needs import unavailable

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
HUB_IMAGE = os.environ.get("GPUHUB_HUB_IMAGE", "gpuhub/hub:latest")
LABELS = {"org.gpuhub.test": "test_stack_images"}
DOMAIN = "gpuhub.test"


@pytest.fixture(scope="module")
def client(docker_client) -> docker.DockerClient:
    return docker_client


def _need(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        unavailable(f"image {image} missing: run images/build.sh stack")


@pytest.fixture(scope="module")
def start(client) -> Iterator[Callable[..., Any]]:
    """start(image, *ports, **run_kwargs): a labelled container, its ports published on loopback;
    removed with its volumes at the end of the module."""
    started = []

    def start(image: str, *ports: int, **kwargs: Any):
        _need(client, image)
        container = client.containers.run(
            image, detach=True, labels=LABELS, ports={f"{p}/tcp": ("127.0.0.1", None) for p in ports}, **kwargs
        )
        started.append(container)
        container.reload()
        container.published = {p: int(container.ports[f"{p}/tcp"][0]["HostPort"]) for p in ports}
        return container

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


def refusal(client, image: str, **kwargs: Any) -> tuple[int, str]:
    """Run ``image`` until it exits (a wrong setting must stop it at once): exit code, output."""
    _need(client, image)
    container = client.containers.run(image, detach=True, labels=LABELS, **kwargs)
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True, v=True)


def until(check: Callable[[], Any], container, what: str, timeout: float = 60) -> Any:
    """Poll ``check`` (exceptions count as not yet) until it returns something true."""
    deadline = time.monotonic() + timeout
    problem: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - not up yet
            problem = e
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.2)
    logs = container.logs(tail=40).decode(errors="replace")
    raise AssertionError(f"{what}: not within {timeout}s ({problem}); status {container.status}; logs:\n{logs}")


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    # swarm secrets are 0444 in a 0755 /run/secrets: readable by the images' own users
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


# ---- gpuhub/hub ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(start, tmp_path_factory):
    """The hub alone: sqlite, the swarm spawner (no engine needed to start), a webhook secret
    given as GPUHUB_WEBHOOK_SECRET_FILE."""
    conf = tmp_path_factory.mktemp("hub-conf")
    (conf / "gpuhub.yaml").write_text("hub:\n  bind_url: http://0.0.0.0:8000\n  ip: 0.0.0.0\n  spawner: swarm\n")
    (conf / "bad.yaml").write_text("hub:\n  port: eighty\n")
    secret = uuid.uuid4().hex
    secrets = tmp_path_factory.mktemp("hub-secrets")
    secret_file(secrets / "webhook_secret", secret)
    container = start(
        HUB_IMAGE, 8000,
        environment={"GPUHUB_CONFIG": "/etc/gpuhub/gpuhub.yaml",
                     "GPUHUB_WEBHOOK_SECRET_FILE": "/run/secrets/webhook_secret"},
        volumes={str(conf): {"bind": "/etc/gpuhub", "mode": "ro"}, str(secrets): {"bind": "/run/secrets", "mode": "ro"}},
    )
    url = f"http://127.0.0.1:{container.published[8000]}"
    until(lambda: requests.get(url + "/hub/health", timeout=2).status_code == 200, container, "hub health")
    container.url, container.secret, container.conf = url, secret, conf
    return container


def test_hub_image_serves_and_checks_its_own_health(hub):
    assert requests.get(hub.url + "/hub/api/", timeout=5).json()["version"]
    assert hub.exec_run("gpuhub-healthcheck").exit_code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert hub.image.labels["org.gpuhub.version"] == version
    # installed, not a checkout; the proxy, git (tutorial sync) and pg_dump (backups) are there
    probe = ("python3 -c 'import gpuhub_spawner, hub_services; print(gpuhub_spawner.__file__)' && "
             "configurable-http-proxy --version && git --version && pg_dump --version")
    code, out = hub.exec_run(["sh", "-c", probe])
    assert code == 0, out.decode()
    assert out.decode().startswith("/opt/gpuhub/venv/lib/python3"), out.decode()


def test_hub_gets_secret_files_as_variables_never_logged(hub):
    find = ("import pathlib\nfor p in pathlib.Path('/proc').glob('[0-9]*'):\n"
            "    if (p / 'cmdline').read_bytes().split(b'\\0')[1:2] == [b'/opt/gpuhub/venv/bin/jupyterhub']:\n"
            "        env = (p / 'environ').read_bytes().split(b'\\0')\n"
            "        print([e.split(b'=', 1)[1].decode() for e in env if e.startswith(b'GPUHUB_WEBHOOK_SECRET=')])\n")
    code, out = hub.exec_run(["python3", "-c", find])
    assert code == 0, out.decode()
    assert out.decode().strip() == repr([hub.secret])  # the value, less its trailing newline
    logs = hub.logs().decode()
    assert "read from secret files: GPUHUB_WEBHOOK_SECRET" in logs
    assert hub.secret not in logs


def test_hub_refuses_a_bad_config_in_one_line(client, hub):
    code, out = hub.exec_run(["gpuhub", "config", "check", "/etc/gpuhub/bad.yaml"])
    checked = out.decode().strip()
    assert code == 2 and "hub.port" in checked and len(checked.splitlines()) == 1, checked
    code, out = refusal(
        client, HUB_IMAGE, environment={"GPUHUB_CONFIG": "/etc/gpuhub/bad.yaml"},
        volumes={str(hub.conf): {"bind": "/etc/gpuhub", "mode": "ro"}},
    )
    assert (code, out.strip()) == (2, checked)


def test_hub_refuses_a_secret_file_it_cannot_read(client):
    code, out = refusal(client, HUB_IMAGE, environment={"GITHUB_CLIENT_SECRET_FILE": "/run/secrets/missing"})
    assert code == 2
    assert out.strip() == ("gpuhub: GITHUB_CLIENT_SECRET_FILE names /run/secrets/missing, which cannot be read: "
                           "give the secret to this service (docker secret ls)")


# ---- gpuhub/postgres -------------------------------------------------------------------------


def test_postgres_signs_in_with_the_secret_password_only(start, tmp_path):
    password = uuid.uuid4().hex
    secret_file(tmp_path / "db_password", password)
    db = start("gpuhub/postgres:latest", 5432, environment={"POSTGRES_PASSWORD_FILE": "/run/secrets/db_password"},
               volumes={str(tmp_path): {"bind": "/run/secrets", "mode": "ro"}})
    dsn = {"host": "127.0.0.1", "port": db.published[5432], "dbname": "gpuhub", "connect_timeout": 3}
    conn = until(lambda: psycopg.connect(**dsn, user="gpuhub", password=password), db, "postgres sign-in")
    with conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("gpuhub", "gpuhub")
        conn.execute("CREATE TABLE t (x int)")  # the database is the role's own
    for user, pw in (("gpuhub", "wrong-" + password), ("postgres", password)):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**dsn, user=user, password=pw)
    assert db.exec_run(["pg_isready", "-q", "-h", "/var/run/postgresql"]).exit_code == 0
    assert password not in db.logs().decode()


# ---- gpuhub/registry -------------------------------------------------------------------------


def _one_file_image(client, name: str) -> None:
    """A one-file image tagged ``name`` (from a tar: nothing to pull)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = name.encode()
        info = tarfile.TarInfo("name.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    repository, _, tag = name.rpartition(":")
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)


def _push(client, name: str) -> str:
    """Push ``name`` and drop it here: the error the engine reports, or ''."""
    repository, _, tag = name.rpartition(":")
    try:
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                return line["error"]
        return ""
    finally:
        client.images.remove(name, force=True)


def test_registry_pushes_to_the_writable_one_and_pulls_from_the_read_only_one(client, start):
    volume = client.volumes.create(labels=LABELS)
    try:
        mount = {volume.name: {"bind": "/var/lib/docker-registry", "mode": "rw"}}
        writable = start("gpuhub/registry:latest", 5000, volumes=mount)
        readonly = start("gpuhub/registry:latest", 5000, volumes=mount,
                         environment={"GPUHUB_REGISTRY_READONLY": "true"})
        rw, ro = (f"127.0.0.1:{c.published[5000]}" for c in (writable, readonly))
        for c, address in ((writable, rw), (readonly, ro)):
            until(lambda a=address: requests.get(f"http://{a}/v2/", timeout=2).ok, c, "registry")
        tag = uuid.uuid4().hex[:8]
        _one_file_image(client, f"{rw}/gpuhub-test/tiny:{tag}")
        assert _push(client, f"{rw}/gpuhub-test/tiny:{tag}") == ""
        pulled = client.images.pull(f"{ro}/gpuhub-test/tiny", tag=tag)
        client.images.remove(pulled.id, force=True)
        _one_file_image(client, f"{ro}/gpuhub-test/other:{tag}")
        # distribution's read-only mode: every write is 405 Method Not Allowed
        assert "405" in _push(client, f"{ro}/gpuhub-test/other:{tag}")
        assert readonly.exec_run(["bash", "-c", readonly.attrs["Config"]["Healthcheck"]["Test"][-1]]).exit_code == 0
    finally:
        for c in client.containers.list(all=True, filters={"volume": volume.name}):
            c.remove(force=True)
        volume.remove(force=True)


# ---- gpuhub/caddy ----------------------------------------------------------------------------


class _Echo(http.server.BaseHTTPRequestHandler):
    """The upstream: answers the request's headers as JSON; a websocket upgrade is accepted
    (101) and then echoes what it is sent."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            self.wfile.write(self.rfile.read(4))
            self.wfile.flush()
            self.close_connection = True
            return
        # which echo server answered, and the path it was asked for (the Grafana route keeps it)
        seen = {**dict(self.headers.items()), "x-echo-port": str(self.server.server_address[1]), "x-echo-path": self.path}
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _echo_on_the_bridge(client) -> Iterator[str]:
    """An echo server on Docker's bridge gateway, where a container reaches it: host:port."""
    # dockerd may list the default bridge without its gateway (seen in CI): then it is the
    # subnet's first address, docker0's own
    (config, *_) = client.networks.get("bridge").attrs["IPAM"]["Config"]
    gateway = config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    server = http.server.ThreadingHTTPServer((gateway, 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{gateway}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def upstream(client) -> Iterator[str]:
    """The hub's proxy behind Caddy (an echo server)."""
    yield from _echo_on_the_bridge(client)


@pytest.fixture(scope="module")
def grafana_upstream(client) -> Iterator[str]:
    """A second echo server, standing in for Grafana behind Caddy's /grafana/ route."""
    yield from _echo_on_the_bridge(client)


@pytest.fixture(scope="module")
def operator_cert(tmp_path_factory) -> Path:
    """The operator's certificate and key for DOMAIN, as the secrets tls_cert and tls_key."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN}",
         "-keyout", str(d / "tls_key"), "-out", str(d / "tls_cert")],
        check=True, capture_output=True,
    )
    for f in d.iterdir():
        secret_file(f, f.read_text().strip())
    return d


def _https(port: int, cert: Path) -> http.client.HTTPSConnection:
    """A connection that names DOMAIN (SNI, Host) and goes to 127.0.0.1:port."""
    conn = http.client.HTTPSConnection(DOMAIN, port, context=ssl.create_default_context(cafile=str(cert)), timeout=5)
    conn._create_connection = lambda _addr, *a, **k: socket.create_connection(("127.0.0.1", port), *a, **k)
    return conn


def _getter(tls_port: int, operator_cert: Path):
    """GET a path from Caddy over HTTPS (trusting the operator's certificate): response, body."""
    def get(path: str) -> tuple[http.client.HTTPResponse, bytes]:
        conn = _https(tls_port, operator_cert / "tls_cert")
        conn.request("GET", path)
        response = conn.getresponse()
        return response, response.read()
    return get


def test_caddy_serves_https_with_the_operators_certificate(start, upstream, operator_cert):
    caddy = start("gpuhub/caddy:latest", 80, 443,
                  environment={"GPUHUB_DOMAIN": DOMAIN, "GPUHUB_TLS": "files", "GPUHUB_UPSTREAM": upstream},
                  volumes={str(operator_cert): {"bind": "/run/secrets", "mode": "ro"}})
    tls_port, http_port = caddy.published[443], caddy.published[80]
    get = _getter(tls_port, operator_cert)
    response, body = until(lambda: get("/hub/health"), caddy, "caddy over HTTPS")
    assert response.status == 200, body
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-for"]
    assert response.getheader("Strict-Transport-Security", "").startswith("max-age=")
    # plain HTTP: a permanent redirect to the same path over HTTPS
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    conn.request("GET", "/hub/login?next=x", headers={"Host": DOMAIN})
    redirect = conn.getresponse()
    assert redirect.status in (301, 308)
    assert redirect.getheader("Location") == f"https://{DOMAIN}/hub/login?next=x"
    # a websocket (JupyterLab's kernel channels) goes through
    ws = _https(tls_port, operator_cert / "tls_cert")
    with contextlib.closing(ws):
        ws.connect()
        ws.sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += ws.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws.sock.sendall(b"ping")
        assert ws.sock.recv(4) == b"ping"


def test_caddy_serves_grafana_under_its_sub_path_and_the_hub_everywhere_else(start, upstream, grafana_upstream,
                                                                              operator_cert):
    caddy = start("gpuhub/caddy:latest", 80, 443,
                  environment={"GPUHUB_DOMAIN": DOMAIN, "GPUHUB_TLS": "files", "GPUHUB_UPSTREAM": upstream,
                               "GPUHUB_GRAFANA_UPSTREAM": grafana_upstream},
                  volumes={str(operator_cert): {"bind": "/run/secrets", "mode": "ro"}})
    get = _getter(caddy.published[443], operator_cert)
    response, body = until(lambda: get("/hub/health"), caddy, "caddy over HTTPS")
    assert response.status == 200 and json.loads(body)["x-echo-port"] == upstream.rsplit(":", 1)[1]
    response, body = get("/grafana/api/health")
    seen = json.loads(body)
    assert seen["x-echo-port"] == grafana_upstream.rsplit(":", 1)[1]  # Grafana's, not the hub's
    assert seen["x-echo-path"] == "/grafana/api/health"  # served from its sub-path: the prefix is kept
    response, _ = get("/grafana")
    assert response.status in (301, 302, 308) and response.getheader("Location") == "/grafana/"
    response, body = get("/grafanax")  # only the sub-path is Grafana's
    assert json.loads(body)["x-echo-port"] == upstream.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"GPUHUB_TLS": "files"}, "gpuhub-caddy: GPUHUB_TLS=files but /run/secrets/tls_cert cannot be read: "
         "give the certificate and key as the secrets tls_cert and tls_key"),
        ({"GPUHUB_TLS": "acme"}, "gpuhub-caddy: GPUHUB_TLS=acme needs GPUHUB_ACME_EMAIL"),
        ({"GPUHUB_TLS": "letsencrypt"}, "gpuhub-caddy: GPUHUB_TLS=letsencrypt is not files, acme or internal"),
        ({"GPUHUB_TLS": "internal", "GPUHUB_DOMAIN": ""}, "gpuhub-caddy: GPUHUB_DOMAIN is not set"),
        ({"GPUHUB_TLS": "internal", "GPUHUB_GRAFANA_UPSTREAM": "grafana"},
         "gpuhub-caddy: GPUHUB_GRAFANA_UPSTREAM=grafana is not host:port"),
    ],
    ids=["files-without-files", "acme-without-email", "unknown-mode", "no-domain", "grafana-not-host-port"],
)
def test_caddy_refuses_a_wrong_setting_in_one_line(client, env, message):
    code, out = refusal(client, "gpuhub/caddy:latest", environment={"GPUHUB_DOMAIN": DOMAIN, **env})
    assert code == 2
    assert len(out.strip().splitlines()) == 1 and out.startswith(message), out


# ---- gpuhub/prometheus -----------------------------------------------------------------------


def test_prometheus_loads_gpuhubs_rules_and_the_stacks_jobs(start, tmp_path):
    for name in ("prometheus_token", "gpuhub-agent-token"):
        secret_file(tmp_path / name, uuid.uuid4().hex)
    prom = start("gpuhub/prometheus:latest", 9090, volumes={str(tmp_path): {"bind": "/run/secrets", "mode": "ro"}})
    url = f"http://127.0.0.1:{prom.published[9090]}"
    until(lambda: requests.get(url + "/-/ready", timeout=2).ok, prom, "prometheus ready")
    groups = requests.get(url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert "gpuhub-dcgm-join" in {g["name"] for g in groups}

    def scraped() -> set[str]:
        targets = requests.get(url + "/api/v1/targets", params={"state": "any"}, timeout=5).json()["data"]
        return {t["scrapeUrl"] for t in targets["activeTargets"]}

    # the static targets come out of discovery a few seconds after start
    scraped = until(scraped, prom, "prometheus targets")
    assert "http://hub:8000/hub/metrics" in scraped
    assert "http://hub:8000/services/gpuhub-exporter/metrics" in scraped
    code, out = prom.exec_run(["promtool", "check", "config", "/etc/gpuhub/prometheus/prometheus.yml"])
    assert code == 0, out.decode()
