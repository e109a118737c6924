"""The GPU-aware culler as a real hub-managed service: real hub, proxy, containers, node agent.

One hub for the module, with the culler registered by jupyterhub_config.py itself (its role
included) and small timeouts from a culler config file.  Passes are driven through the
service's ``api/pass`` trigger, not by its timer.  The GPU signal comes from the real node
agent (``gpuhub_spawner/node/agent.py``) reading a FAKE NVML (tests/support/fakes/fake_nvml_file.py)
whose utilization the tests change; nothing about GPUs is real on these machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
from cullerpass import decision, pass_until, spawn, start_busy_kernel
from harness import REPO, HubProcess, container_of, exec_as_user, fake_gpus, free_port

from gpuhub_spawner.storage.ledger import UsageLedger
from gpuhub_spawner.storage.notices import NoticeStore

pytestmark = [pytest.mark.docker, pytest.mark.hub]

IDLE_GPU = 6  # seconds (warnings come WARN seconds before)
WARN = 3
PROFILES = [
    {"slug": "gpu", "display_name": "GPU", "pool": "gpu"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
    {"slug": "cpu-short", "display_name": "CPU, short idle timeout", "pool": None},
]
CULLER_CONFIG = {
    "CullerApp": {
        "every": 0,  # passes only when a test triggers one
        "idle_gpu_timeout": IDLE_GPU,
        "idle_cpu_timeout": 600,
        "profile_idle_timeouts": {"cpu-short": 6},
        "warn_seconds": WARN,
        "hub_timeout": 10,
    }
}
NOTICE = "/home/jovyan/CULL-WARNING.txt"


# ---- the module's hub, agent and fake NVML ----------------------------------------------


def _write_gpus(path: Path, uuid_: str, utilization: int) -> None:
    doc = {"gpus": [{"uuid": uuid_, "name": "NVIDIA L40S", "memory_mb": 46068, "utilization": utilization,
                     "memory_utilization": 0, "processes": []}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _wait_http(url: str, ok, what: str, log=lambda: "", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok(requests.get(url, timeout=5)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} did not answer:\n{log()}")


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("culler-hub")
    gpus = fake_gpus(1, "cu")
    hub = HubProcess(
        workdir,
        {"gpu_inventory": gpus, "gpu_profiles": PROFILES, "gpu_queue_max_wait": 0},
        "c.JupyterHub.last_activity_interval = 2\n"  # proxy activity reaches the hub quickly
        # the culler's metrics need read:metrics (as the prometheus service has it)
        'c.JupyterHub.load_roles.append({"name": "test-metrics", "scopes": ["read:metrics"], '
        '"services": ["gpuhub-test"]})\n',
    )
    hub.gpu_uuid = gpus[0]["uuid"]
    hub.nvml_file = workdir / "gpus.json"
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 0)
    agent_port = free_port()
    agent_token = workdir / "agent-token"
    agent_token.write_text(os.urandom(16).hex())
    agent_log = open(workdir / "agent.log", "wb")  # noqa: SIM115 - the agent keeps it
    agent = subprocess.Popen(
        [sys.executable, "-m", "gpuhub_spawner.node.agent", "--ip", "127.0.0.1", "--port", str(agent_port),
         "--hub-id", hub.hub_id, "--cache-ttl", "0.2", "--docker-refresh", "0.5",
         "--token-file", str(agent_token)],
        cwd=REPO,
        env={**os.environ, "GPUHUB_NVML_MODULE": "fakes.fake_nvml_file", "GPUHUB_FAKE_NVML_FILE": str(hub.nvml_file),
             "PYTHONPATH": f"{REPO / 'tests' / 'support'}:{REPO}"},
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )
    hub.agent_url = f"http://127.0.0.1:{agent_port}"
    hub.agent_log = workdir / "agent.log"
    config = workdir / "culler.json"
    config.write_text(json.dumps(CULLER_CONFIG))
    hub.usage_db = f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}"
    hub.culler = hub.url + "/services/gpuhub-culler/"
    with hub.kept_for_tests(docker_client, log_lines=150):
        try:
            _wait_http(hub.agent_url + "/api/activity", lambda r: r.status_code in (200, 401), "node agent",
                       hub.agent_log.read_text)
            hub.start(env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(config),
                           "GPUHUB_GPU_AGENT_URLS": hub.agent_url, "GPUHUB_GPU_AGENT_TOKEN_FILE": str(agent_token)})
            _wait_http(hub.culler + "metrics", lambda r: r.status_code in (200, 403), "culler service", hub.log_tail)
            hub.ledger = UsageLedger(hub.usage_db)
            yield hub
        finally:
            agent.terminate()
            agent.wait(10)


# ---- helpers ----------------------------------------------------------------------------








def user_token(hub, name: str) -> str:
    r = hub.api("POST", f"/users/{name}/tokens", json={"note": "culler test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]




def hub_home(hub, name: str) -> str:
    return hub.home_page(name)


def home_until(hub, name: str, ok, timeout: float = 15) -> str:
    """The home page of ``name`` once ``ok(page)``: the hub reads warnings off its event loop, so a
    new or lifted warning shows within a couple of seconds, not at once."""
    deadline = time.monotonic() + timeout
    while True:
        page = hub_home(hub, name)
        if ok(page):
            return page
        assert time.monotonic() < deadline, f"{name}'s home page never matched:\n{page[-2000:]}"
        time.sleep(0.5)


def notice(docker_client, hub, name: str) -> str | None:
    code, out = exec_as_user(container_of(docker_client, hub, name), f"cat {NOTICE}")
    return out if code == 0 else None




def lab_notices(hub, name: str) -> list[dict]:
    """What ``name``'s JupyterLab is shown: the image's server extension (``GET gpuhub/notices``)."""
    r = requests.get(f"{hub.url}/user/{name}/gpuhub/notices",
                     headers={"Authorization": f"token {user_token(hub, name)}"}, timeout=20)
    assert r.ok, r.text
    return r.json()["notices"]


def metric(hub, line_start: str) -> float:
    text = requests.get(hub.culler + "metrics", headers={"Authorization": f"token {hub.token}"}, timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert values, f"no {line_start} in the culler's metrics"
    return sum(values)


# ---- tests ------------------------------------------------------------------------------


def test_busy_kernel_is_kept_idle_server_is_warned_then_culled_and_its_gpu_freed(hub, users, docker_client):
    alice, bob = users("alice", "bob")
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 0)
    spawn(hub, alice, "gpu")
    unit = container_of(docker_client, hub, alice).labels["org.gpuhub.unit"]
    token = user_token(hub, alice)
    kernel_id = start_busy_kernel(hub, alice, token, "import time\nfor _ in range(1200):\n    time.sleep(0.1)\n")

    time.sleep(IDLE_GPU + 1.5)  # no browser, no request: only the kernel is at work
    assert decision(hub, alice) == ("keep", "kernel-busy")
    assert notice(docker_client, hub, alice) is None
    assert hub.user(alice)["servers"]

    # the loop is interrupted: from now on nothing happens on the server
    r = requests.post(f"{hub.url}/user/{alice}/api/kernels/{kernel_id}/interrupt",
                      headers={"Authorization": f"token {token}"}, timeout=20)
    assert r.status_code == 204, r.text
    culls_before = metric(hub, 'gpuhub_culler_culls_total{reason="idle"}')
    assert pass_until(hub, alice, "warn") == ("warn", "idle")
    text = notice(docker_client, hub, alice)
    assert text is not None and "idle" in text and "JUPYTERHUB_ACTIVITY_URL" in text, text
    page = home_until(hub, alice, lambda p: "gpuhub-cull-warning" in p)
    assert "time left" in page and "idle" in page
    assert "gpuhub-cull-warning" not in hub_home(hub, bob)  # each user sees only their own

    # the culler's kernel queries (inside the container) are not activity: the cull comes
    assert pass_until(hub, alice, "cull", timeout=WARN + 20) == ("cull", "idle")
    hub.wait_stopped(alice)
    assert metric(hub, 'gpuhub_culler_culls_total{reason="idle"}') == culls_before + 1
    assert all(a["user"] != alice for a in hub.ledger.open_allocations())  # the ledger closed the interval
    home_until(hub, alice, lambda p: "gpuhub-cull-warning" not in p)

    # its unit is free: the only GPU goes to the next user at once (no queue in this hub)
    spawn(hub, bob, "gpu")
    assert container_of(docker_client, hub, bob).labels["org.gpuhub.unit"] == unit


def test_gpu_work_keeps_a_server_and_a_silent_agent_never_culls(hub, users, docker_client):
    (gina,) = users("gina")
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 90)
    spawn(hub, gina, "gpu")
    time.sleep(IDLE_GPU + 1.5)
    assert decision(hub, gina) == ("keep", "gpu-busy")  # no browser, no kernel: the GPU works

    # the GPU goes quiet: the idle clock starts from the last busy reading, then the warning
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 0)
    time.sleep(0.6)  # the agent's sample lives 0.2 s
    assert decision(hub, gina) == ("keep", "gpu-activity")
    assert pass_until(hub, gina, "warn") == ("warn", "idle")

    # work resumes within the window: the warning is lifted, the notice file removed
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 75)
    time.sleep(0.6)
    assert decision(hub, gina) == ("cancel", "activity")
    assert notice(docker_client, hub, gina) is None
    assert decision(hub, gina) == ("keep", "gpu-busy")


def test_unreachable_agent_counts_as_gpu_busy(hub, users, tmp_path):
    (hana,) = users("hana")
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 0)
    spawn(hub, hana, "gpu")
    # point the culler at an agent that is not there: a second culler run with --once, same hub
    results = _culler_once(hub, tmp_path, agent_url=f"http://127.0.0.1:{free_port()}", dry_run=True)
    mine = [s for s in results if s["user"] == hana]
    assert [(s["action"], s["reason"]) for s in mine] == [("keep", "gpu-unknown")]
    results = _culler_once(hub, tmp_path, agent_url=hub.agent_url, dry_run=True, gpu_timeout=0.5)
    mine = [s for s in results if s["user"] == hana]
    assert [(s["action"], s["reason"]) for s in mine] == [("warn", "idle")]  # control: same run, agent up


def test_max_age_is_warned_in_the_server_and_the_hub_then_stopped(hub, users, docker_client):
    (maxi,) = users("maxi")
    # the limit comes from a group's properties, as an admin sets it in the admin panel
    assert hub.api("POST", "/groups/short-sessions").status_code in (201, 409)
    assert hub.api("POST", "/groups/short-sessions/users", json={"users": [maxi]}).ok
    assert hub.api("PUT", "/groups/short-sessions/properties", json={"max_session_hours": str(12 / 3600)}).ok
    try:
        spawn(hub, maxi, "cpu")
        assert pass_until(hub, maxi, "warn") == ("warn", "max-age")
        text = notice(docker_client, hub, maxi)
        assert text is not None and "longest session" in text
        # JupyterLab's extension reads the card: a quota limit, offered no "keep" button
        (card,) = lab_notices(hub, maxi)
        assert card["reason"] == "max-age" and card["keepable"] is False and "longest session" in card["message"]
        page = home_until(hub, maxi, lambda p: "gpuhub-cull-warning" in p)
        assert "longest session" in page and "time left" in page
        # activity does not lift a max-age warning
        token = user_token(hub, maxi)
        assert requests.get(f"{hub.url}/user/{maxi}/api/status", headers={"Authorization": f"token {token}"},
                            timeout=20).ok
        assert decision(hub, maxi)[0] in ("warn", "cull")
        pass_until(hub, maxi, "cull", timeout=30)
        hub.wait_stopped(maxi)
        home_until(hub, maxi, lambda p: "gpuhub-cull-warning" not in p)
    finally:
        hub.api("DELETE", "/groups/short-sessions")


def test_out_of_gpu_hours_stops_the_gpu_server_and_cpu_stays_available(hub, users, docker_client):
    (budg,) = users("budg")
    hub.ledger.set_override(budg, {"gpu_hours_per_period": 8 / 3600, "period": "day"}, by="test")  # 8 GPU-s
    _write_gpus(hub.nvml_file, hub.gpu_uuid, 95)  # busy the whole time: the budget wins anyway
    try:
        spawn(hub, budg, "gpu")
        assert pass_until(hub, budg, "warn") == ("warn", "gpu-budget")
        assert "GPU-hour budget" in (notice(docker_client, hub, budg) or "")
        assert pass_until(hub, budg, "cull", timeout=30) == ("cull", "gpu-budget")
        hub.wait_stopped(budg)
        assert all(a["user"] != budg for a in hub.ledger.open_allocations())
        r = hub.spawn(budg, {"profile": "gpu"})
        assert r.status_code == 403 and "A CPU-only server is still available" in r.json()["message"], r.text
        spawn(hub, budg, "cpu")  # out of GPU time, not out of the hub
        assert decision(hub, budg)[0] == "keep"
    finally:
        hub.ledger.delete_override(budg)
        _write_gpus(hub.nvml_file, hub.gpu_uuid, 0)


def test_keepalive_cancels_an_idle_warning(hub, users, docker_client):
    kit, other = users("kit", "kat")
    spawn(hub, kit, "cpu-short")  # a profile with its own (short) idle timeout
    assert lab_notices(hub, kit) == []
    assert pass_until(hub, kit, "warn") == ("warn", "idle")
    assert notice(docker_client, hub, kit) is not None
    (card,) = lab_notices(hub, kit)  # the card JupyterLab's extension shows, with its keep button
    assert card["reason"] == "idle" and card["keepable"] is True and "idle" in card["message"]
    # someone else cannot keep kit's server (they run none: refused); kit can, with any of their tokens
    r = requests.post(hub.culler + "api/keepalive", headers={"Authorization": f"token {user_token(hub, other)}"},
                      timeout=20)
    assert r.status_code == 400
    # ... and stored nothing that could lift the warning (no pass here: the proxy's record of
    # kit's own earlier requests may reach the hub late and move the idle deadline by itself)
    store = NoticeStore(hub.usage_db)
    try:
        assert not [k for k in store.keepalives() if k[0] in (kit, other)]
    finally:
        store.engine.dispose()
    r = requests.post(hub.culler + "api/keepalive", headers={"Authorization": f"token {user_token(hub, kit)}"},
                      timeout=20)
    assert r.ok and r.json() == {"user": kit, "server": "", "kept": True}
    assert decision(hub, kit) == ("cancel", "activity")
    assert notice(docker_client, hub, kit) is None
    assert lab_notices(hub, kit) == []  # card removed with the notice: the notification is lifted
    assert requests.post(hub.culler + "api/keepalive", timeout=20).status_code == 403


def test_jupyterlabs_keep_button_posts_the_servers_activity_with_its_own_token(hub, users, docker_client):
    """What "Keep my server" in JupyterLab calls: the image's server extension posts the server's
    activity to the hub with the server's own token; the culler then lifts the idle warning."""
    kip, kat = users("kip", "kat2")
    spawn(hub, kip, "cpu-short")
    assert pass_until(hub, kip, "warn") == ("warn", "idle")
    keep = f"{hub.url}/user/{kip}/gpuhub/keep"
    # only kip (or someone kip's server is shared with) reaches the button's endpoint
    r = requests.post(keep, headers={"Authorization": f"token {user_token(hub, kat)}"}, timeout=20)
    assert r.status_code == 403, r.text
    assert decision(hub, kip) == ("warn", "idle")
    before = time.time()
    r = requests.post(keep, headers={"Authorization": f"token {user_token(hub, kip)}"}, timeout=30)
    assert r.ok and r.json()["kept"] is True, r.text
    logs = container_of(docker_client, hub, kip).logs().decode(errors="replace")
    assert "gpuhub: keep-alive posted to the hub" in logs
    server = hub.api("GET", f"/users/{kip}").json()["servers"][""]
    assert datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00")).timestamp() >= before - 1
    assert decision(hub, kip) == ("cancel", "activity")
    assert lab_notices(hub, kip) == [] and notice(docker_client, hub, kip) is None


def test_pass_trigger_needs_admin_or_service_access(hub, users):
    (pleb,) = users("pleb")
    r = requests.post(hub.culler + "api/pass", headers={"Authorization": f"token {user_token(hub, pleb)}"},
                      timeout=20)
    assert r.status_code == 403
    assert requests.post(hub.culler + "api/pass", timeout=20).status_code == 403


def test_the_culler_token_holds_only_what_it_needs(hub, users):
    (victim,) = users("victim")
    token = _culler_token(hub)
    api = hub.url + "/hub/api"

    def call(method, path, **kw):
        return requests.request(method, api + path, headers={"Authorization": f"token {token}"}, timeout=20, **kw)

    me = call("GET", "/user").json()
    assert me["kind"] == "service" and me["name"] == "gpuhub-culler"
    # what it uses
    assert call("GET", "/users?state=active").status_code == 200
    assert call("GET", f"/users/{victim}").status_code == 200
    assert "auth_state" not in call("GET", f"/users/{victim}").json()
    assert call("GET", "/gpuhub/lines").json() == {"pools": {}}  # what the GPU lines want back
    # the lines name users: a user's token does not read them, nor the test's own service token,
    # which may list users and start and stop their servers (a custom scope only the culler holds)
    for token_ in (user_token(hub, victim), hub.token):
        r = requests.get(api + "/gpuhub/lines", headers={"Authorization": f"token {token_}"}, timeout=20)
        assert r.status_code == 403 and "custom:gpuhub-lines:read" in r.text, r.text
    # what it must not do
    forbidden = [
        ("POST", "/users", {"json": {"usernames": ["intruder"]}}),
        ("POST", "/users/intruder", {}),
        ("DELETE", f"/users/{victim}", {}),
        ("PATCH", f"/users/{victim}", {"json": {"admin": True}}),
        ("POST", f"/users/{victim}/server", {"json": {}}),
        ("GET", f"/users/{victim}/tokens", {}),
        ("POST", f"/users/{victim}/tokens", {"json": {}}),
        ("GET", "/groups", {}),
        ("POST", "/groups/intruders", {}),
        ("PUT", "/groups/anything/properties", {"json": {"max_gpu_units": 99}}),
        ("GET", "/services", {}),
        ("GET", "/proxy", {}),
        ("POST", "/shutdown", {}),
    ]
    for method, path, kw in forbidden:
        r = call(method, path, **kw)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
    assert call("GET", "/users/intruder").status_code == 404  # not created
    assert hub.user(victim)["admin"] is False


# ---- helpers for the last tests ---------------------------------------------------------


def _culler_pid(hub) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"hub_services.culler" in cmd and f"GPUHUB_HUB_ID={hub.hub_id}".encode() in env.split(b"\0"):
            return int(entry.name)
    raise AssertionError("the culler process of this hub was not found")


def _culler_token(hub) -> str:
    env = Path(f"/proc/{_culler_pid(hub)}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"JUPYTERHUB_API_TOKEN="))


def _culler_once(hub, tmp_path, agent_url: str, dry_run: bool, gpu_timeout: float = 600) -> list[dict]:
    """One pass of a second culler process (``--once``) with the service's own environment."""
    env = dict(v.split("=", 1) for v in Path(f"/proc/{_culler_pid(hub)}/environ").read_text().split("\0") if "=" in v)
    cmd = [sys.executable, "-m", "hub_services.culler", "--once", f"--gpu-agent-url={agent_url}",
           f"--idle-gpu-timeout={gpu_timeout}", "--warn-seconds=60"]
    if dry_run:
        cmd.append("--dry-run")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)["servers"]


def test_a_server_without_a_reachable_container_is_kept_unless_told(hub, users):
    """As on a swarm, where the server runs on another node: no kernel probe, so no idle cull
    (and never the culler's token sent instead), unless idle_without_probe says so."""
    (nod,) = users("nod")
    spawn(hub, nod, "cpu")
    time.sleep(1.5)
    env = dict(v.split("=", 1) for v in Path(f"/proc/{_culler_pid(hub)}/environ").read_text().split("\0") if "=" in v)
    cmd = [sys.executable, "-m", "hub_services.culler", "--once", "--dry-run", "--no-docker", "--idle-cpu-timeout=1",
           "--warn-seconds=60"]

    def once(*extra: str) -> tuple[list[tuple[str, str]], str]:
        out = subprocess.run([*cmd, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        mine = [(s["action"], s["reason"]) for s in json.loads(out.stdout)["servers"] if s["user"] == nod]
        return mine, out.stderr

    mine, log = once()
    assert mine == [("keep", "probe-failed")]
    assert f"{nod}: no container on this engine to ask for kernels" in log
    mine, _ = once("--CullerApp.idle_without_probe=True")
    assert mine == [("warn", "idle")]
