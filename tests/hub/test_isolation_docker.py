"""User servers are untrusted: limits, the user network and the host firewall, on a real engine
with a real hub and proxy.

Each hub here runs on a network of this module (``GPUHUB_USER_NETWORK``), which the hub creates
at start like the default one; the module removes it, its iptables chain and its jump at the end.
"""

from __future__ import annotations

import secrets
import socket
import threading

import pytest
import requests
from harness import container_of, exec_as_user

pytestmark = [pytest.mark.docker, pytest.mark.hub]

G = 1024**3
TEST_LABEL = "org.gpuhub.test"


@pytest.fixture(scope="module")
def user_network(docker_client):
    """A user network name for this module's hubs (≤ 15 characters: it is also the bridge's)."""
    name = "gpuhub-t" + secrets.token_hex(3)
    yield name
    from gpuhub_spawner.hub import isolation_host  # lazily: the teardown must not hide a test's failure

    isolation_host.remove_user_isolation(name, docker_client)


def _hub(hub_factory, user_network, config=None, env=None):
    hub = hub_factory({"gpu_inventory": [], **(config or {})}, start=False)
    hub.start(env={"GPUHUB_USER_NETWORK": user_network, **(env or {})})
    return hub


def _spawn_ready(hub, docker_client, user, options=None):
    r = hub.spawn(user, options or {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)
    return container_of(docker_client, hub, user)


# ---- limits ---------------------------------------------------------------------------


def test_every_server_gets_memory_cpu_and_pid_limits_by_default(docker_client, hub_factory, user_network):
    profiles = [
        {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
        {"slug": "big", "display_name": "Big CPU", "pool": None, "mem_limit": "12G", "cpu_limit": 1},
    ]
    hub = _hub(hub_factory, user_network, {"gpu_profiles": profiles})
    hub.create_users(["alice", "bob", "carol"])
    r = hub.api("POST", "/groups/small", json={"users": ["carol"]})
    assert r.status_code == 201, r.text
    r = hub.api("PUT", "/groups/small/properties", json={"mem_limit": "1G"})
    assert r.ok, r.text

    expected = {
        # nothing set: the defaults, and no swap beyond the memory limit
        "alice": ("cpu", 8 * G, 200_000),
        # the profile's limits win, even above the default
        "bob": ("big", 12 * G, 100_000),
        # the group quota's memory wins; CPUs stay at the default
        "carol": ("cpu", 1 * G, 200_000),
    }
    for user, (profile, memory, quota) in expected.items():
        host = _spawn_ready(hub, docker_client, user, {"profile": profile}).attrs["HostConfig"]
        assert host["Memory"] == memory, (user, host["Memory"])
        assert host["MemorySwap"] == memory, (user, host["MemorySwap"])
        assert (host["CpuQuota"], host["CpuPeriod"]) == (quota, 100_000), user
        assert host["PidsLimit"] == 2048, (user, host["PidsLimit"])


def test_memory_past_the_cap_is_oom_killed_and_the_hub_keeps_answering(docker_client, hub_factory, user_network):
    hub = _hub(hub_factory, user_network, {"default_mem_limit": "256M"})
    hub.create_users(["mallory"])
    container = _spawn_ready(hub, docker_client, "mallory")

    # 600 MB, every page touched: more than the 256 MB cap (and swap is capped with it)
    code, out = exec_as_user(
        container, "python3 -c 'b = bytearray(600 * 2**20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; print(\"allocated\")'"
    )
    assert code == 137 and "allocated" not in out, (code, out)  # SIGKILL from the OOM killer
    cgroup = f"/sys/fs/cgroup/memory/docker/{container.id}/memory.oom_control"
    try:
        with open(cgroup) as f:
            counters = dict(line.split() for line in f)
        assert int(counters.get("oom_kill", "1")) >= 1, counters
    except FileNotFoundError:
        pass  # another cgroup layout: the exit status says it
    # the hub, the proxy and the server itself are fine
    assert requests.get(hub.url + "/hub/api/", timeout=10).status_code == 200
    assert hub.user("mallory")["servers"][""]["ready"]
    container.reload()
    assert container.status == "running"


FORK_LOOP = """
import errno, os, signal
children, error = [], None
for _ in range(3000):
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode.get(e.errno)
        break
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "60"])
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), error)
"""


def test_a_fork_loop_hits_the_pid_cap(docker_client, hub_factory, user_network):
    hub = _hub(hub_factory, user_network)
    hub.create_users(["forky"])
    container = _spawn_ready(hub, docker_client, "forky")
    code, out = container.exec_run(["python3", "-c", FORK_LOOP], user="1000")
    out = out.decode(errors="replace").strip()
    assert code == 0, out
    started, error = out.split()[-2:]
    assert error == "EAGAIN" and int(started) < 2048, out
    assert requests.get(hub.url + "/hub/api/", timeout=10).status_code == 200


# ---- network -------------------------------------------------------------------------


class Listener:
    """A TCP service on every host address (as a careless node agent or database would be)."""

    def __init__(self, name: str):
        self.name = name
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(f"{self.name}\n".encode())

    def close(self) -> None:
        self.sock.close()


CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=3).close()
    print("open")
except OSError as e:
    print("closed", type(e).__name__)
"""


def _from_container(container, host: str, port: int) -> str:
    code, out = container.exec_run(["python3", "-c", CONNECT, host, str(port)], user="1000")
    return out.decode(errors="replace").strip()


def _from_host(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def test_servers_reach_the_hub_api_and_nothing_else(docker_client, hub_factory, user_network):
    listeners = [Listener(n) for n in ("node-agent", "prometheus", "postgresql")]
    try:
        hub = _hub(hub_factory, user_network)
        hub.create_users(["alice", "bob"])
        alice = _spawn_ready(hub, docker_client, "alice")
        bob = _spawn_ready(hub, docker_client, "bob")
        [net_a] = alice.attrs["NetworkSettings"]["Networks"].values()
        [net_b] = bob.attrs["NetworkSettings"]["Networks"].values()
        gateway, bob_ip = net_a["Gateway"], net_b["IPAddress"]

        # the host (hub, proxy) reaches bob's server and the stand-ins: they are really there
        assert _from_host(bob_ip, 8888)
        for listener in listeners:
            assert _from_host(gateway, listener.port), listener.name

        # alice cannot reach bob's server, nor the host's services, nor the proxy's API
        assert _from_container(alice, bob_ip, 8888).startswith("closed"), "alice reached bob's server"
        for listener in listeners:
            seen = listener.accepted
            assert _from_container(alice, gateway, listener.port).startswith("closed"), listener.name
            assert listener.accepted == seen, listener.name
        proxy_api = int(hub.env["GPUHUB_PROXY_API_PORT"])
        assert _from_container(alice, gateway, proxy_api).startswith("closed")

        # ... but she reaches the hub API, and her JupyterLab loads through the proxy
        code, out = exec_as_user(
            alice,
            "python3 -c 'import os, urllib.request; "
            "print(urllib.request.urlopen(os.environ[\"JUPYTERHUB_API_URL\"] + \"/\", timeout=10).status)'",
        )
        assert code == 0 and out.strip() == "200", out
        r = hub.api("POST", "/users/alice/tokens", json={"note": "isolation test"})
        r.raise_for_status()
        lab = requests.get(
            hub.url + "/user/alice/lab",
            headers={"Authorization": f"token {r.json()['token']}"},
            timeout=30,
        )
        assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.status_code
    finally:
        for listener in listeners:
            listener.close()


# ---- fail closed --------------------------------------------------------------------------


def test_no_firewall_no_hub_unless_the_operator_opts_out(docker_client, hub_factory, user_network, tmp_path):
    # a PATH without iptables (as on a host where it is not installed)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
    hub = hub_factory({}, start=False)
    code, log = hub.start_refused({"GPUHUB_USER_NETWORK": user_network, "PATH": path})
    assert code != 0
    assert "iptables is not installed" in log and "GPUHUB_USER_FIREWALL=off" in log, log[-2000:]
    assert "Traceback" not in log

    opted_out = hub_factory({}, start=False)
    opted_out.start(env={"GPUHUB_USER_NETWORK": user_network, "PATH": path, "GPUHUB_USER_FIREWALL": "off"})
    assert "GPUHUB_USER_FIREWALL=off" in opted_out.log_path.read_text()


def test_a_network_where_containers_reach_each_other_is_refused(docker_client, hub_factory):
    name = "gpuhub-t" + secrets.token_hex(3)
    network = docker_client.networks.create(name, driver="bridge", labels={TEST_LABEL: "isolation"})
    try:
        hub = hub_factory({}, start=False)
        code, log = hub.start_refused({"GPUHUB_USER_NETWORK": name})
        assert code != 0
        assert f"The Docker network '{name}' lets containers connect to each other" in log, log[-2000:]
        assert f"docker network rm {name}" in log and "Traceback" not in log
    finally:
        network.remove()
