"""The workshop's stack on the rig's manager, deployed with the documented command.

:func:`workshop_config` writes the operator's ``gpuhub.yaml`` (a ``deploy:`` section, GitHub
sign-in against the FAKE GitHub with the test CA's certificate, the workshop's profiles and
quotas); :func:`deploy` runs ``gpuhub deploy`` on it with ``DOCKER_HOST`` naming the manager's
engine (its unix socket, as on the manager itself); :class:`StackHub` is how the test reaches
the deployed hub: through Caddy over HTTPS, as attendees do, verified with the test CA.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
import yaml
from swarm_rig import SwarmRig

ROOT = Path(__file__).resolve().parents[2]
GPUHUB = ROOT / ".venv" / "bin" / "gpuhub"
HUB_ID = "gpuhub"  # the label value of the deployed hub's services (gpu_hub_id's default)
STACK = "gpuhub"
#: the workshop's public name (Caddy picks its certificate by the name the client asks for)
PUBLIC_NAME = "workshop.gpuhub.test"
_NAMES: dict[str, str] = {}


def resolve(name: str, ip: str) -> None:
    """Make ``name`` resolve to ``ip`` in this process (the test's /etc/hosts line, without
    touching the machine's): the DNS record an operator points at the manager."""
    if not _NAMES:
        real = socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):
            return real(_NAMES.get(host, host), *args, **kwargs)

        socket.getaddrinfo = getaddrinfo
    _NAMES[name] = ip


def workshop_config(folder: Path, public_host: str, github, ca_pem: str, tls_cert: Path, tls_key: Path,
                    **sections: Any) -> Path:
    """The operator's gpuhub.yaml in ``folder`` (``sections`` are laid over the defaults here)."""
    from workshop import BLOCKED, PROFILES, QUEUE_WAIT, QUOTA, STAFF, TEAM

    doc: dict[str, Any] = {
        "hub": {"spawner": "swarm"},
        "sign_in": {
            "authenticator": "github",
            "blocked_users": [BLOCKED],
            "github": {"client_id": github.client_id, "orgs": [TEAM, STAFF],
                       "admin_teams": [f"{STAFF}={github.id_of(STAFF)}"], "url": github.url,
                       "ca_certificates": ca_pem},
        },
        "images": {"default": "gpuhub/singleuser:latest"},
        "inventory": {"queue_max_wait": QUEUE_WAIT},
        "profiles": PROFILES,
        "quota_defaults": QUOTA,
        "deploy": {"public_url": f"https://{public_host}", "secrets_dir": str(folder / "secrets"),
                   "tls": {"mode": "files", "cert_file": str(tls_cert), "key_file": str(tls_key)}},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "gpuhub.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Deployed:
    code: int
    output: str
    seconds: float
    #: monotonic time of the line "deploying the stack ..." (when `docker stack deploy` runs)
    stack_deploy_at: float | None = None


def deploy(rig: SwarmRig, config: Path, env: dict[str, str] | None = None, timeout: float = 600,
           log: Path | None = None) -> Deployed:
    """``gpuhub deploy --config CONFIG`` against the rig's manager (DOCKER_HOST: its socket); its
    output is kept (and written to ``log`` as it comes, with the seconds since the start)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "GPUHUB_", "JUPYTERHUB_"))}
    environ.update({"DOCKER_HOST": rig.manager.url, **(env or {})})
    t0 = time.monotonic()
    lines, stack_at = [], None
    with subprocess.Popen([str(GPUHUB), "deploy", "--config", str(config), "--timeout", str(int(timeout))],
                          env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            now = time.monotonic()
            if stack_at is None and "deploying the stack" in line:
                stack_at = now
            lines.append(line)
            if log:
                with open(log, "a") as f:
                    f.write(f"{now - t0:7.1f} {line}")
        code = proc.wait()
    return Deployed(code, "".join(lines), time.monotonic() - t0, stack_at)


def remove_stack(rig: SwarmRig, name: str = STACK) -> None:
    """The stack, its user servers, then its volumes, secrets and configs (a fresh stack next)."""
    client = rig.manager_client()
    try:
        for s in client.services.list():
            labels = s.attrs["Spec"].get("Labels") or {}
            if labels.get("com.docker.stack.namespace") == name or labels.get("org.gpuhub.hub") == HUB_ID:
                s.remove()
        # the old stack goes as with a machine lost: its containers are killed, not stopped (a
        # graceful stop waited out the stack's stop grace periods: a minute per removal)
        ours = {"label": f"com.docker.stack.namespace={name}"}
        deadline = time.monotonic() + 60
        while (left := client.api.containers(all=True, filters=ours)) and time.monotonic() < deadline:
            for c in left:  # ids only: no inspect of a vanishing one
                try:
                    client.api.remove_container(c["Id"], force=True)
                except docker.errors.APIError:
                    pass
            time.sleep(0.2)
        for kind in (client.secrets, client.configs):
            for obj in kind.list(filters={"label": f"org.gpuhub.stack={name}"}):
                obj.remove()
        for v in client.volumes.list(filters={"label": f"com.docker.stack.namespace={name}"}):
            v.remove(force=True)
        _wait_networks_gone(client, name)
    finally:
        client.close()


def _wait_networks_gone(client, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not client.networks.list(filters={"label": f"com.docker.stack.namespace={name}"}):
            return
        time.sleep(0.5)


def wait_answering(url: str, verify: str, timeout: float = 300) -> float:
    """Seconds until ``url``/hub/health answers 200 through Caddy (HTTPS, the test CA)."""
    t0 = time.monotonic()
    session = requests.Session()
    session.trust_env = False
    while time.monotonic() - t0 < timeout:
        try:
            if session.get(url + "/hub/health", verify=verify, timeout=5).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def hub_container(rig: SwarmRig, name: str = STACK):
    """The running container of the stack's hub service on the manager."""
    client = rig.manager_client()
    found = client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}_hub",
                                            "status": "running"})
    assert len(found) == 1, [c.name for c in found]
    return found[0]


@dataclass
class StackHub:
    """The deployed hub as the test reaches it: its public URL (Caddy, HTTPS) and the CA to trust."""

    public_url: str
    verify: str
    config: Path
    spki: str  # the certificate's key, for the browser (see workshop.Browser)
    address: str = ""  # where the public name points (the manager)
    hub_id: str = HUB_ID
    deploy_output: str = ""
    github_secret: str = ""
    author: Any = None  # the tutorial author's clone (gitserver.WorkClone) of the synced repository

    @property
    def secrets_dir(self) -> Path:
        """The operator's secrets state directory (gpuhub.yaml's deploy.secrets_dir)."""
        return Path(yaml.safe_load(self.config.read_text())["deploy"]["secrets_dir"])


def stack_images() -> list[str]:
    from gpuhub_spawner.deploy import stack

    return sorted(set(stack.IMAGES.values()))


def stack_logs(rig: SwarmRig, tail: int = 40, services: tuple[str, ...] = ()) -> str:
    """The last lines of every stack service's log (or of ``services``), for a failure's message.

    Read with the docker CLI on the manager under a time limit: the engine's log stream of a
    global service (the tutorial mirror) can hang waiting on a node, and a failure's message
    must never hang the test."""
    client = rig.manager_client()
    try:
        names = services or tuple(s.name for s in client.services.list(
            filters={"label": f"com.docker.stack.namespace={STACK}"}))
    finally:
        client.close()
    out = []
    for name in names:
        _code, lines = rig.manager.sh(f"timeout 30 docker service logs --tail {int(tail)} {name} 2>&1", check=False)
        out.append(f"---- {name} ----\n{lines}")
    return "\n".join(out)


def drop_stale_images(rig: SwarmRig) -> None:
    """The manager keeps its images between runs: drop the stack images this machine has rebuilt
    since, so that `gpuhub deploy` loads the code under test."""
    manager = rig.manager_client()
    try:
        for image in stack_images():
            try:
                if manager.images.get(image).id != rig.host.images.get(image).id:
                    manager.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass
    finally:
        manager.close()


#: what a backup must keep, read in the hub's container from the stack's database
STATE_QUERY = """
import json
from sqlalchemy import create_engine, text
url = "postgresql+psycopg://gpuhub:%s@db:5432/gpuhub" % open("/run/secrets/db_password").read().strip()
with create_engine(url).connect() as c:
    q = lambda sql: c.execute(text(sql)).all()
    props = lambda v: json.loads(v) if isinstance(v, str) else v
    print(json.dumps({"users": sorted(r[0] for r in q("select name from users")),
                      "groups": {r[0]: props(r[1]) for r in q("select name, properties from groups")},
                      "memberships": len(q("select * from user_group_map")),
                      "usage": len(q("select * from gpuhub_usage"))}))
"""


WAITS_QUERY = """
import json
from sqlalchemy import create_engine, text
url = "postgresql+psycopg://gpuhub:%s@db:5432/gpuhub" % open("/run/secrets/db_password").read().strip()
with create_engine(url).connect() as c:
    rows = c.execute(text("select \\"user\\", pool, place, told_low, told_high, holds, outcome, "
                          "extract(epoch from ended_at - joined_at) from gpuhub_line_wait order by ended_at")).all()
names = ("user", "pool", "place", "told_low", "told_high", "holds", "outcome", "waited_s")
print(json.dumps([dict(zip(names, [float(v) if i == 7 else v for i, v in enumerate(r)])) for r in rows]))
"""


def in_hub(rig: SwarmRig, script: str, what: str) -> Any:
    """The JSON that ``script`` prints last, run by python3 in the stack's hub container."""
    import json

    from polling import wait_for

    said: list[str] = []

    def ask() -> Any:
        # right after a deploy or a restore the hub's task may still be replaced: the engine
        # then refuses the exec ("OCI runtime exec failed"), and the next container is asked
        try:
            code, out = hub_container(rig).exec_run(["python3", "-c", script])
        except (AssertionError, docker.errors.APIError) as e:
            said.append(str(e)[-500:])
            return None
        if code != 0:
            said.append(out.decode(errors="replace")[-2000:])
            return None
        return [json.loads(out.decode().strip().splitlines()[-1])]

    try:
        return wait_for(ask, 120, what)[0]
    except AssertionError as e:
        raise AssertionError(f"{e}; last: {said[-1:]}") from None


def line_waits(rig: SwarmRig) -> list[dict[str, Any]]:
    """The finished waits in line the stack's hub kept (table ``gpuhub_line_wait``), oldest first."""
    return in_hub(rig, WAITS_QUERY, "the stack hub's finished waits in line")


def hub_state(rig: SwarmRig) -> dict[str, Any]:
    """Users, groups with their quota properties, memberships and usage rows of the stack's hub."""
    return in_hub(rig, STATE_QUERY, "the stack hub's users, groups and usage")


def gpuhub_cli(rig: SwarmRig, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`gpuhub ARGS` from the operator's shell, DOCKER_HOST at the manager's socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "PG", "DOCKER_"))}
    env["DOCKER_HOST"] = rig.manager.url
    return subprocess.run([str(GPUHUB), *args], env=env, capture_output=True, text=True, timeout=timeout)
