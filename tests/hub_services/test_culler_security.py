"""The culler against a real hub, proxy, PostgreSQL and user containers: what it must never do.

- A user's server never sees a token but its own: the server here is jupyterhub-singleuser
  wrapped so that it appends every request it receives (URI and headers) to a file in the
  user's scratch volume, which outlives the container; warn, keep-alive and cull passes run
  against it.
- The culler's token cannot reach a user's server at all (no ``access:servers``).
- Keep-alives: only the caller's running servers, bodies capped, rows bounded per user.
- Metrics need a ``read:metrics`` token; the committed Prometheus job scrapes them.
- The notice's keep-alive command works when run inside the container.
- A slow database (a PostgreSQL table locked by the test) does not freeze the hub's pages.
- The kernel probe's exec path against a container whose "server" answers what it likes:
  megabytes or nothing at all make a failed probe (never a crash), and it sends only the
  container's own token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy
from cullerpass import FAKE_SERVER, decision, pass_until, spawn
from harness import (
    IMAGE,
    TEST_LABEL,
    HubProcess,
    container_of,
    exec_as_user,
    fake_gpus,
    processes,
    server_env,
)
from pg import create_database, postgres_fixture
from promserver import scrape_with_committed_job

from gpuhub_spawner.storage.notices import NoticeStore
from hub_services.culler.probe import parse_probe
from hub_services.culler.signals import Containers

pytestmark = [pytest.mark.docker, pytest.mark.hub]

postgres_url = postgres_fixture()

WARN = 3
SHORT_IDLE = 6
RECORD = "/home/jovyan/scratch/.received-requests.jsonl"
# jupyterhub-singleuser, recording every request it receives before anything else sees it
RECORDER = f"""
import json, sys
import tornado.httputil as h
_init = h.HTTPServerRequest.__init__
def _record(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    with open({RECORD!r}, "a") as f:
        f.write(json.dumps({{"uri": self.uri, "headers": list(self.headers.get_all())}}) + "\\n")
h.HTTPServerRequest.__init__ = _record
from jupyterhub.singleuser import main
sys.argv[0] = "jupyterhub-singleuser"
sys.exit(main())
"""
PROFILES = [
    {"slug": "short", "display_name": "CPU, short idle timeout", "pool": None, "default": True},
    {"slug": "gpu", "display_name": "GPU", "pool": "gpu"},
]
# hub_timeout: the default (20 s), below the tests' own 30 s: a keep-alive asks the hub for the
# caller's servers, and a loaded CI machine must not turn a slow hub into a 503 the test reads
# as a refusal
CULLER_CONFIG = {"CullerApp": {"every": 0, "idle_cpu_timeout": 600, "idle_gpu_timeout": 600,
                               "profile_idle_timeouts": {"short": SHORT_IDLE}, "warn_seconds": WARN}}


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory, postgres_url):
    workdir = tmp_path_factory.mktemp("culler-security")
    prom_token = workdir / "prometheus-token"
    prom_token.write_text(os.urandom(24).hex())
    config = workdir / "culler.json"
    config.write_text(json.dumps(CULLER_CONFIG))
    hub = HubProcess(
        workdir,
        {"gpu_inventory": fake_gpus(1, "cs"), "gpu_profiles": PROFILES, "gpu_queue_max_wait": 0,
         "cmd": ["python3", "-c", RECORDER]},
        "c.JupyterHub.last_activity_interval = 2\n"
        'c.JupyterHub.authenticator_class = "dummy"\n'
        "c.Authenticator.allow_all = True\n",
    )
    hub.db_url = create_database(postgres_url, "culler_" + hub.hub_id)
    hub.prom_token = prom_token.read_text()
    hub.prom_token_file = prom_token
    hub.culler = hub.url + "/services/gpuhub-culler/"
    with hub.kept_for_tests(docker_client, log_lines=150):
        hub.start(env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(config),
                       "GPUHUB_USAGE_DB_URL": hub.db_url, "GPUHUB_PROMETHEUS_TOKEN_FILE": str(prom_token)})
        deadline = time.monotonic() + 60
        while not _answers(hub.culler + "metrics"):
            assert time.monotonic() < deadline, f"culler did not answer:\n{hub.log_tail()}"
            time.sleep(0.3)
        hub.notices = NoticeStore(hub.db_url)
        yield hub


# ---- helpers ----------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code in (200, 403)
    except requests.RequestException:
        return False










def user_token(hub, name: str) -> str:
    r = hub.api("POST", f"/users/{name}/tokens", json={"note": "culler security test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def keepalive(hub, token: str | None, **kw) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.post(hub.culler + "api/keepalive", headers=headers, timeout=30, **kw)


def refused_unread(post) -> None:
    """``post()`` sent a body over the service's limit: it was refused before it was read.

    The service reads the headers, answers a bare ``400 Bad Request`` (tornado's "Content-Length
    too long": no handler ran, so no JSON) and closes.  What the client sees depends on timing:
    that 400 (passed on by the proxy), the connection dropped while it still uploads, or, through
    the proxy, its 503 for an upstream that hung up.  Each means refused unread; a handler's
    answer (200 kept, a JSON 4xx) would mean the body was read.
    """
    try:
        r = post()
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
        return  # dropped mid-upload
    assert (r.status_code, r.content) == (400, b"") or r.status_code == 503, (r.status_code, r.text[:300])


def culler_token(hub) -> str:
    for _pid, (cmd, environ) in processes("cmdline", "environ"):
        env = environ.split(b"\0")
        if b"hub_services.culler" in cmd and f"GPUHUB_HUB_ID={hub.hub_id}".encode() in env:
            return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"JUPYTERHUB_API_TOKEN="))
    raise AssertionError("the culler process of this hub was not found")


def received(docker_client, hub, name: str) -> list[dict]:
    """Every request the user's server received (from the scratch volume, which outlives it)."""
    volume = docker_client.volumes.get(f"{hub.hub_id}-{name}-scratch")
    path = Path(volume.attrs["Mountpoint"]) / Path(RECORD).name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tokens_in(record: dict) -> set[str]:
    found = set()
    for key, value in record["headers"]:
        if key.lower() == "authorization":
            found.add(value.split(None, 1)[-1].strip())
    found |= set(re.findall(r"[?&]token=([^&]+)", record["uri"]))
    return found


def signed_in(hub, name: str) -> requests.Session:
    s = requests.Session()
    s.get(hub.url + "/hub/login", timeout=10)
    r = s.post(hub.url + "/hub/login", data={"username": name, "password": "x", "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return s


# ---- tests ------------------------------------------------------------------------------


def test_a_server_sees_no_token_but_its_own_across_warn_keepalive_and_cull(hub, users, docker_client):
    (rec,) = users("rec")
    spawn(hub, rec)
    own = server_env(container_of(docker_client, hub, rec))["JUPYTERHUB_API_TOKEN"]
    mine = user_token(hub, rec)
    # the recorder works: a request of the user's own reaches it, token and all
    assert requests.get(f"{hub.url}/user/{rec}/api/status", headers={"Authorization": f"token {mine}"},
                        timeout=20).ok
    assert mine in set().union(*(tokens_in(r) for r in received(docker_client, hub, rec)))

    assert pass_until(hub, rec, "warn") == ("warn", "idle")  # the kernels were asked before the warning
    r = keepalive(hub, mine)
    assert r.status_code == 200, r.text
    assert decision(hub, rec) == ("cancel", "activity")
    assert pass_until(hub, rec, "warn") == ("warn", "idle")
    assert pass_until(hub, rec, "cull", timeout=WARN + 20) == ("cull", "idle")
    deadline = time.monotonic() + 30
    while hub.user(rec).get("servers"):
        assert time.monotonic() < deadline, "the server was not stopped"
        time.sleep(0.3)

    records = received(docker_client, hub, rec)
    probes = [r for r in records if "no_track_activity" in r["uri"]]
    assert len(probes) >= 4, records  # kernels and status, asked before each warning and the cull
    assert all(tokens_in(r) == {own} for r in probes), probes  # asked with the server's own token
    secret = culler_token(hub)
    assert secret not in json.dumps(records)
    seen = set().union(*(tokens_in(r) for r in records))
    assert seen <= {own, mine}, f"the server saw {len(seen - {own, mine})} token(s) not its own"


def test_the_culler_token_cannot_reach_users_servers(hub, users):
    (vic,) = users("vic")
    spawn(hub, vic)
    token = culler_token(hub)
    model = requests.get(hub.url + "/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=20).json()
    assert model["name"] == "gpuhub-culler"
    assert not [s for s in model["scopes"] if s.startswith("access:servers")], model["scopes"]
    for path in ("api/status", "api/kernels", "api/contents", "terminals/websocket/1"):
        r = requests.get(f"{hub.url}/user/{vic}/{path}", headers={"Authorization": f"token {token}"},
                         allow_redirects=False, timeout=20)
        assert r.status_code in (403, 302), (path, r.status_code, r.text[:200])
    # the server is there: its own user gets in
    assert requests.get(f"{hub.url}/user/{vic}/api/status",
                        headers={"Authorization": f"token {user_token(hub, vic)}"}, timeout=20).ok


def test_keepalive_only_for_running_servers_of_the_caller_bounded(hub, users):
    kee, oth = users("kee", "oth")
    spawn(hub, kee)
    token = user_token(hub, kee)
    assert keepalive(hub, None).status_code == 403
    assert keepalive(hub, token).status_code == 200
    # a server the caller does not run, another user's server, junk: 400, nothing stored
    assert keepalive(hub, token, params={"server": "nope"}).status_code == 400
    assert keepalive(hub, user_token(hub, oth)).status_code == 400  # oth runs nothing
    assert keepalive(hub, user_token(hub, oth), params={"server": ""}).status_code == 400
    for i in range(30):
        assert keepalive(hub, token, params={"server": f"junk-{i}"}).status_code == 400
    assert keepalive(hub, token, params={"server": "x" * 5000}).status_code == 400
    # big bodies are refused before they are read, directly and through the proxy; a small body
    # on the same request is fine
    direct = f"http://127.0.0.1:{hub.env['GPUHUB_CULLER_PORT']}/services/gpuhub-culler/api/keepalive"
    auth = {"Authorization": f"token {token}"}
    assert requests.post(direct, headers=auth, data={"note": "y" * 1000}, timeout=30).status_code == 200
    big = {"server": "y" * (2 * 1024 * 1024)}
    refused_unread(lambda: requests.post(direct, headers=auth, data=big, timeout=30))
    refused_unread(lambda: keepalive(hub, token, data=big))
    # rows are bounded by the user's running servers: a stale row of a gone server is dropped
    hub.notices.keepalive(kee, "gone-server")
    assert keepalive(hub, token).status_code == 200
    rows = {k: v for k, v in hub.notices.keepalives().items() if k[0] in (kee, oth)}
    assert set(rows) == {(kee, "")}, rows


def test_metrics_need_a_read_metrics_token_and_prometheus_scrapes_them(hub, users, tmp_path):
    (met,) = users("met")
    url = hub.culler + "metrics"
    assert requests.get(url, timeout=10).status_code == 403
    assert requests.get(url, headers={"Authorization": f"token {user_token(hub, met)}"}, timeout=10).status_code == 403
    assert requests.get(url, headers={"Authorization": f"token {hub.token}"}, timeout=10).status_code == 403
    r = requests.get(url, headers={"Authorization": f"Bearer {hub.prom_token}"}, timeout=10)
    assert r.status_code == 200 and "gpuhub_culler_passes_total" in r.text

    scrape_with_committed_job(
        tmp_path / "prom", "gpuhub-culler", hub.prom_token_file, hub.port, 'gpuhub_culler_passes_total{job="gpuhub-culler"}'
    )


def test_the_keepalive_command_of_the_notice_works_inside_the_container(hub, users, docker_client):
    (nat,) = users("nat")
    spawn(hub, nat)
    assert pass_until(hub, nat, "warn") == ("warn", "idle")
    container = container_of(docker_client, hub, nat)
    code, text = exec_as_user(container, "cat /home/jovyan/CULL-WARNING.txt")
    assert code == 0, text
    lines = text.splitlines()
    command = lines[next(i for i, line in enumerate(lines) if "terminal" in line) + 1].strip()
    out = container.exec_run(["bash", "-c", command], user="1000")
    assert out.exit_code == 0, out.output.decode(errors="replace")
    assert decision(hub, nat) == ("cancel", "activity")
    assert exec_as_user(container, "cat /home/jovyan/CULL-WARNING.txt")[0] != 0  # notice removed


def test_a_slow_database_does_not_freeze_the_hub_pages(hub, users):
    (slo,) = users("slo")
    hub.notices.set_warning(slo, "", "idle", time.time(), time.time() + 600, "Your server will be stopped soon.")
    session = signed_in(hub, slo)
    deadline = time.monotonic() + 20
    while "gpuhub-cull-warning" not in session.get(hub.url + "/hub/home", timeout=20).text:
        assert time.monotonic() < deadline, "the warning never showed"
        time.sleep(0.5)
    engine = sqlalchemy.create_engine(hub.db_url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("LOCK TABLE gpuhub_cull_warning IN ACCESS EXCLUSIVE MODE"))
            time.sleep(2.5)  # past the cache's 2 s: the next page starts a read that now waits
            for _ in range(3):  # (a blocked hub answers neither within the timeout)
                page = session.get(hub.url + "/hub/home", timeout=10)
                assert page.ok and "gpuhub-cull-warning" in page.text  # the last known warning
                assert requests.get(hub.url + "/hub/api/", timeout=10).ok
                time.sleep(1)
            conn.rollback()
    finally:
        engine.dispose()
        hub.notices.clear_warning(slo, "")


# ---- the probe's exec path against a container that answers what it likes ----------------



def test_the_probe_reads_only_the_servers_answer_bounded_with_its_own_token(docker_client):
    own = os.urandom(16).hex()
    container = docker_client.containers.run(
        IMAGE, ["python3", "-c", FAKE_SERVER], detach=True, user="1000", labels={TEST_LABEL: "culler-probe"},
        environment={"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/u/", "JUPYTERHUB_API_TOKEN": own},
    )
    containers = Containers("none", "/tmp/notice", client=docker_client)

    def probe(mode: str) -> bytes | None:
        assert container.exec_run(["sh", "-c", f"echo {mode} > /tmp/mode"], user="1000").exit_code == 0
        return asyncio.run(containers.probe(container.id))

    try:
        deadline = time.monotonic() + 30
        while (out := probe("busy")) is None:
            assert time.monotonic() < deadline, container.logs().decode(errors="replace")
            time.sleep(0.5)
        assert parse_probe(out)[0][0].execution_state == "busy"
        assert probe("huge") is None  # megabytes of "kernels": a failed probe, not a crash
        assert probe("hang") is None  # a server that never answers: bounded by the script's timeouts
        code, auth = container.exec_run(["cat", "/tmp/auth.txt"], user="1000")
        assert code == 0 and set(auth.decode().split()) == {"token", own}  # only the container's own token
    finally:
        container.remove(force=True)
