"""Swarm mode's Docker API is out of reach of users (issue 11, item 1), on the real rig.

The rig runs what operators are told to run (README, "Swarm"): no plaintext Docker API on any
node; the hub reaches the manager's engine over mutual TLS (certificates from
deploy/swarm/make-tls.sh).  A user's server is a real task spawned by a real hub; from inside
it every Docker API address it could find is tried, in plain HTTP and in TLS without a client
certificate.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from harness import REPO
from swarm_rig import SwarmRig
from test_swarm_spawner import PROFILES, _services

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

#: run inside the user's server (as the user): asks GET /version of every address and port
PROBE = r"""
import json, os, socket, ssl, sys

def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(bytes.fromhex(f[2])[::-1])

def ask(host, port, tls):
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError as e:
        return {"connected": False, "error": "%s: %s" % (type(e).__name__, e)}
    try:
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=host)
        s.settimeout(5)
        s.sendall(b"GET /version HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        data = b""
        while len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return {"connected": True, "response": data[:400].decode(errors="replace")}
    except OSError as e:  # ssl.SSLError is an OSError
        return {"connected": True, "error": "%s: %s" % (type(e).__name__, e)}
    finally:
        s.close()

hosts, ports, control = json.loads(sys.argv[1])
gw = gateway()
hosts = sorted(set(hosts + ([gw] if gw else [])))
out = {"gateway": gw, "uid": os.getuid(), "results": [],
       "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]}
for host in hosts:
    for port in ports:
        for tls in (False, True):
            out["results"].append({"host": host, "port": port, "tls": tls, **ask(host, port, tls)})
out["control"] = ask(control[0], control[1], False)
print(json.dumps(out))
"""


def _answered(result: dict) -> bool:
    """Did a Docker engine answer?  (a 200, or the engine's version document)"""
    response = result.get("response", "")
    return "ApiVersion" in response or bool(re.match(r"HTTP/1\.[01] 200", response))


def test_no_docker_api_answers_from_inside_a_users_server_and_the_hub_still_spawns(rig: SwarmRig, swarm_hub):
    hub = swarm_hub({"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0})
    hub.create_users(["mallory"])
    r = hub.spawn("mallory", {"profile": "cpu"}, timeout=120)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("mallory", timeout=240)

    svc = _services(rig, hub)["mallory"]
    node = rig.nodes[svc["node"]]
    cid = svc["task"]["Status"]["ContainerStatus"]["ContainerID"]
    # every address of the rig the task might reach: the manager, its own node, every other node,
    # the host's side of the rig network (and, found inside, the task's own default gateway)
    hosts = sorted({n.ip for n in rig.nodes.values()} | {rig.gateway})
    control = [rig.gateway, int(hub.env["GPUHUB_HUB_PORT"])]  # the hub's API: must answer
    client = node.client()
    try:
        run = client.containers.get(cid).exec_run(["python3", "-c", PROBE, json.dumps([hosts, [2375, 2376], control])])
    finally:
        client.close()
    assert run.exit_code == 0, run.output.decode(errors="replace")
    found = json.loads(run.output.decode().strip().splitlines()[-1])
    print(json.dumps(found, indent=1))

    answered = [f"{x['host']}:{x['port']} ({'TLS' if x['tls'] else 'plain'})" for x in found["results"] if _answered(x)]
    assert not answered, f"a Docker API answered a user's server at {answered}"
    assert not found["sockets"], found["sockets"]
    assert found["uid"] == 1000  # the user, as in their terminal
    # the probe really reached the network: the hub answers it, and the manager's TLS port
    # took the connection and refused it for want of a client certificate
    assert found["control"].get("response", "").startswith("HTTP/1.1 "), found["control"]
    manager_tls = next(x for x in found["results"] if x["host"] == rig.manager.ip and x["port"] == 2376 and x["tls"])
    assert manager_tls["connected"] and "error" in manager_tls, manager_tls
    # and the hub spawned over mutual TLS, not a plaintext port
    assert hub.env["GPUHUB_DOCKER_HOST"] == f"tcp://{rig.manager.ip}:2376", hub.env["GPUHUB_DOCKER_HOST"]
    assert hub.env.get("DOCKER_TLS_VERIFY") == "1"


def test_the_managers_tls_port_refuses_clients_without_a_certificate_of_its_ca(rig: SwarmRig, tmp_path):
    """Only a client certificate signed by the swarm's CA gets in (make-tls.sh's CA)."""
    import docker

    from gpuhub_spawner.core.dockerhost import PinnedTLSConfig as TLSConfig

    certs = rig.tls_dir / "client"
    good = docker.DockerClient(base_url=rig.manager_tls_url, timeout=10, tls=TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")), ca_cert=str(certs / "ca.pem"), verify=True))
    try:
        assert good.version()["ApiVersion"]
    finally:
        good.close()
    # another CA's client certificate (an attacker's own make-tls.sh run)
    other = tmp_path / "other"
    subprocess.run([str(REPO / "deploy" / "swarm" / "make-tls.sh"), str(other), rig.manager.ip],
                   check=True, capture_output=True)
    for tls in (
        TLSConfig(client_cert=(str(other / "client" / "cert.pem"), str(other / "client" / "key.pem")),
                  ca_cert=str(certs / "ca.pem"), verify=True),
        TLSConfig(ca_cert=str(certs / "ca.pem"), verify=True),  # no client certificate
    ):
        # docker-py asks the engine's version as it connects: the handshake fails there
        with pytest.raises(docker.errors.DockerException) as refused:
            docker.DockerClient(base_url=rig.manager_tls_url, timeout=10, tls=tls).version()
        # refused in the handshake: "unknown ca", or the connection closed for want of a certificate
        assert re.search(r"SSL\w*Error", str(refused.value)), refused.value


@pytest.mark.parametrize(
    "env, says",
    [
        ({"GPUHUB_DOCKER_HOST": "tcp://10.0.0.5:2375"}, "DOCKER_TLS_VERIFY"),
        ({"DOCKER_HOST": "tcp://10.0.0.5:2375"}, "DOCKER_TLS_VERIFY"),
        ({"GPUHUB_DOCKER_HOST": "http://10.0.0.5:2375"}, "DOCKER_TLS_VERIFY"),
        ({"GPUHUB_DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1",
          "DOCKER_CERT_PATH": "/nonexistent/certs"}, "ca.pem"),
    ],
    ids=["gpuhub-docker-host-plain", "docker-host-plain", "http-url", "tls-without-certificates"],
)
def test_the_hub_refuses_a_docker_api_without_mutual_tls(hub_factory, env, says):
    hub = hub_factory({}, start=False, spawner_class="gpu-swarm")
    hub.env.update({"GPUHUB_SPAWNER": "swarm", **env})
    code, log = hub.start_refused()
    assert code != 0
    assert "gpuhub: configuration error:" in log and says in log, log[-3000:]
    assert "mutual TLS" in log and "Traceback" not in log, log[-3000:]
