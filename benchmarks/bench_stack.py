"""The deployed stack on the workshop rig, against plain SwarmSpawner on the same rig in the same run.

1. Deploy: `gpuhub deploy` (the documented command) on the rig's manager (tests/support/
   workshop.py: a manager and three GPU workers joined with `gpuhub node setup`, 10 FAKE MIG
   1g.10gb units), timed from its `docker stack deploy` to the hub's first answer through
   Caddy over HTTPS (/hub/health polled every 0.25 s from before the command runs).
2. Burst: 30 attendees press Start at the same moment (a barrier) for 10 GPU units.
   - stack: gpuhub's hub in the stack; attendees signed in through the FAKE GitHub over HTTPS,
     Start through the REST API with their cookies.  10 get a unit, the rest wait in line.
   - plain: upstream dockerspawner SwarmSpawner (benchmarks/rig_swarmspawner.py: the port read
     from the task, nothing else changed) in a hub process on this machine reaching the manager
     over mutual TLS, each server reserving one NVIDIA_MIG_1G_10GB generic resource: 10 tasks
     run, the rest stay pending in swarm.
   Reported per side: the first answer to every POST (p50/p95/max, and how many within 1 s),
   and POST -> ready of the servers that got a unit (p50/p95/max).
One JSON object on stdout (and to --out); progress on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from argparse import ArgumentParser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from fakes.fake_github import FakeGitHub  # noqa: E402
from harness import IMAGE, HubProcess  # noqa: E402
from swarm_rig import SwarmRig  # noqa: E402
from testca import TestCA  # noqa: E402
from workshop import (  # noqa: E402
    ATTENDEES,
    STAFF,
    TEAM,
    UNITS,
    Attendee,
    Press,
    build_workshop_rig,
    quantiles,
)
from workshop_stack import (  # noqa: E402
    HUB_ID,
    PUBLIC_NAME,
    deploy,
    drop_stale_images,
    remove_stack,
    resolve,
    workshop_config,
)

KIND = "NVIDIA_MIG_1G_10GB"


def log(msg: str, *args: Any) -> None:
    print(time.strftime("%H:%M:%S ") + (msg % args if args else msg), file=sys.stderr, flush=True)


def first_healthy(url: str, verify: str, stop: threading.Event, seen: dict[str, float]) -> None:
    session = requests.Session()
    session.trust_env = False
    while not stop.is_set():
        try:
            if session.get(url + "/hub/health", verify=verify, timeout=2).status_code == 200:
                seen["at"] = time.monotonic()
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)


def deploy_stack(rig: SwarmRig, github: FakeGitHub, ca: TestCA, folder: Path) -> tuple[dict[str, Any], str]:
    leaf = ca.leaf("hub", [PUBLIC_NAME])
    resolve(PUBLIC_NAME, rig.manager.ip)  # the DNS record pointing at the manager
    config = workshop_config(folder, PUBLIC_NAME, github, ca.cert.read_text(), leaf.cert, leaf.key)
    url = f"https://{PUBLIC_NAME}"
    seen: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=first_healthy, args=(url, str(ca.cert), stop, seen), daemon=True)
    poller.start()
    done = deploy(rig, config, {"GITHUB_CLIENT_SECRET": github.client_secret}, log=folder / "deploy.log")
    poller.join(120)
    stop.set()
    if done.code != 0:
        raise RuntimeError(f"gpuhub deploy failed:\n{done.output[-3000:]}")
    result = {"gpuhub_deploy_s": round(done.seconds, 1),
              "stack_deploy_to_hub_answering_s": round(seen["at"] - done.stack_deploy_at, 1)
              if "at" in seen and done.stack_deploy_at else None}
    log("deploy: %s", result)
    return result, url


def ready_times(pressed: dict[str, tuple[Press, float]], is_ready, deadline_s: float) -> dict[str, float]:
    """user -> seconds from the POST to ready, for those ready within ``deadline_s``."""
    out: dict[str, float] = {}
    deadline = time.monotonic() + deadline_s
    waiting = [u for u, (p, _t) in pressed.items() if p.status in (201, 202)]
    while waiting and time.monotonic() < deadline and len(out) < UNITS:
        for u in list(waiting):
            if is_ready(u):
                out[u] = time.monotonic() - pressed[u][1]
                waiting.remove(u)
        time.sleep(0.25)
    return out


def summarize(presses: list[Press], ready: dict[str, float]) -> dict[str, Any]:
    firsts = [p.first_answer_s for p in presses]
    statuses: dict[str, int] = {}
    for p in presses:
        statuses[str(p.status or p.error[:40])] = statuses.get(str(p.status or p.error[:40]), 0) + 1
    return {"presses": len(presses), "statuses": statuses, "first_answer": quantiles(firsts),
            "first_answers_within_1s": sum(t < 1.0 for t in firsts), "spawn_to_ready": quantiles(list(ready.values())),
            "ready": len(ready)}


def timed_presses(fn, users: list[str]) -> dict[str, tuple[Press, float]]:
    """Everyone presses at once: user -> (Press, monotonic time of the press)."""
    barrier = threading.Barrier(len(users))

    def go(u: str) -> tuple[Press, float]:
        barrier.wait()
        t = time.monotonic()
        return fn(u), t

    with ThreadPoolExecutor(len(users)) as pool:
        return dict(zip(users, pool.map(go, users)))


def stack_burst(url: str, github: FakeGitHub, ca: TestCA) -> dict[str, Any]:
    people = {u: Attendee(u, url, str(ca.cert)) for u in ATTENDEES}
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda a: a.sign_in(github), people.values()))
    missing = [u for u, a in people.items() if not a.signed_in]
    if missing:
        raise RuntimeError(f"not signed in: {missing}")
    pressed = timed_presses(lambda u: people[u].press_start({"profile": "mig"}), list(people))

    def is_ready(u: str) -> bool:
        server = people[u].api("GET", f"/users/{u}", timeout=10).json().get("servers", {}).get("")
        return bool(server and server.get("ready"))

    ready = ready_times(pressed, is_ready, 300)
    result = summarize([p for p, _t in pressed.values()], ready)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda a: a.api("DELETE", f"/users/{a.login}/server"), people.values()))
    return result


def plain_hub(rig: SwarmRig, workdir: Path) -> HubProcess:
    extra = (
        "\nc.Spawner.start_timeout = c.Spawner.http_timeout = 600\n"
        "c.JupyterHub.spawner_class = 'rig_swarmspawner.RigSwarmSpawner'\n"
        "from gpuhub_spawner.core.dockerhost import require_mutual_tls\n"
        f"c.SwarmSpawner.client_kwargs = {{'base_url': {rig.manager_tls_url!r}, 'tls': require_mutual_tls("
        f"{rig.manager_tls_url!r}, {rig.hub_env()!r}, 'bench').client_tls()}}\n"
        f"c.SwarmSpawner.image = {IMAGE!r}\n"
        "c.SwarmSpawner.cmd = ['start-singleuser.sh']\n"
        f"c.SwarmSpawner.extra_resources_spec = {{'generic_resources': {{{KIND!r}: 1}}}}\n"
        "c.SwarmSpawner.extra_endpoint_spec = {'ports': [{'Protocol': 'tcp', 'TargetPort': 8888, "
        "'PublishMode': 'host'}]}\n"
        "c.SwarmSpawner.extra_task_spec = {'restart_policy': {'Condition': 'none'}}\n"
        "c.SwarmSpawner.prefix = c.GPUDockerSpawner.prefix\n"
    )
    hub = HubProcess(workdir, {"gpu_queue_max_wait": 0}, extra, spawner_class="gpu-docker")
    hub.env.update({"GPUHUB_SPAWNER": "swarm", **rig.hub_env(), "GPUHUB_HUB_IP": rig.gateway,
                    "PYTHONPATH": str(ROOT / "benchmarks")})
    return hub


def plain_burst(rig: SwarmRig, workdir: Path) -> dict[str, Any]:
    hub = plain_hub(rig, workdir)
    users = [f"p{i:02d}" for i in range(len(ATTENDEES))]
    try:
        hub.start()
        hub.create_users(users)

        def press(u: str) -> Press:
            p = Press(u)
            t0 = time.perf_counter()
            try:
                r = hub.spawn(u, {}, timeout=120)
                p.status = r.status_code
            except requests.RequestException as e:
                p.error = f"{type(e).__name__}: {e}"
            p.first_answer_s = time.perf_counter() - t0
            return p

        pressed = timed_presses(press, users)
        ready = ready_times(pressed, lambda u: bool((hub.user(u).get("servers", {}).get("") or {}).get("ready")), 300)
        return summarize([p for p, _t in pressed.values()], ready)
    finally:
        hub.stop()
        client = rig.manager_client()
        for s in client.services.list(filters={"name": hub.hub_id}):
            s.remove()
        client.close()


def wait_no_user_servers(rig: SwarmRig, timeout: float = 180) -> None:
    """Until the stack's user services are gone and their GPU units free again."""
    client = rig.manager_client()
    try:
        deadline = time.monotonic() + timeout
        while client.services.list(filters={"label": f"org.gpuhub.hub={HUB_ID}"}) and time.monotonic() < deadline:
            time.sleep(1)
        while any(t["Status"]["State"] == "running" and not t.get("ServiceID") for t in client.api.tasks()):
            time.sleep(1)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--prefix", default=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-bench-stack"))
    args = parser.parse_args(argv)
    host = docker.from_env(timeout=600)
    rig = SwarmRig(host, prefix=args.prefix)
    result: dict[str, Any] = {"benchmark": "stack", "attendees": len(ATTENDEES), "units": UNITS}
    with tempfile.TemporaryDirectory(prefix="gpuhub-bench-stack-") as tmp:
        folder = Path(tmp)
        ca = TestCA(folder / "ca")
        github = FakeGitHub()
        try:
            t0 = time.monotonic()
            build_workshop_rig(rig)
            result["rig_s"] = round(time.monotonic() - t0, 1)
            leaf = ca.leaf("github", [rig.gateway])
            for login in ATTENDEES:
                github.add_user(login, teams={TEAM})
            github.id_of(STAFF)
            github.start(rig.gateway, (str(leaf.cert), str(leaf.key)))
            remove_stack(rig)
            drop_stale_images(rig)
            result["deploy"], url = deploy_stack(rig, github, ca, folder)
            result["load1_before_burst"] = round(os.getloadavg()[0], 2)
            result["stack"] = stack_burst(url, github, ca)
            log("stack burst: %s", result["stack"])
            wait_no_user_servers(rig)
            result["plain_swarmspawner"] = plain_burst(rig, folder / "plain")
            log("plain burst: %s", result["plain_swarmspawner"])
            for q in ("p50_s", "p95_s"):
                a, b = result["stack"]["spawn_to_ready"][q], result["plain_swarmspawner"]["spawn_to_ready"][q]
                result[f"ratio_spawn_{q[:-2]}"] = round(a / b, 3) if a is not None and b else None
        finally:
            github.stop()
            try:
                remove_stack(rig)
            except Exception as e:  # noqa: BLE001 - the rig goes anyway
                log("removing the stack: %s", e)
            rig.teardown()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
