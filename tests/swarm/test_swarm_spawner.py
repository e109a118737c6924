"""GPUSwarmSpawner on a real multi-node swarm (tests/support/swarm_rig.py), with a real hub and proxy.

The GPUs are fake (generic resources of made-up UUIDs, a no-op NVIDIA hook); the swarm's
scheduling, task states, networking and the servers themselves are real.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pynvml
import pytest
from harness import render_form
from polling import wait_for as _wait
from swarm_rig import SwarmRig

from gpuhub_spawner.storage.ledger import UsageLedger

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

PROFILES = [
    {"slug": "gpu", "display_name": "Whole GPU", "pool": "gpu"},
    {"slug": "mig", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb"},
    {"slug": "shared", "display_name": "Shared GPU", "pool": "shared"},
    {"slug": "big", "display_name": "MIG 3g.40gb", "pool": "mig-3g.40gb"},
    {"slug": "cpu", "display_name": "CPU only", "pool": None},
]


#: the tests read the hub's own /hub/metrics without a token
OPEN_METRICS = "c.JupyterHub.authenticate_prometheus = False\n"


def hub_metrics(hub) -> str:
    import requests

    return requests.get(hub.url + "/hub/metrics", timeout=10).text


def _config(**extra) -> dict:
    return {"gpu_profiles": PROFILES, "gpu_queue_max_wait": 0, **extra}


def _services(rig: SwarmRig, hub) -> dict[str, dict]:
    """user -> {labels, task, node} of the hub's live services."""
    client = rig.manager_client()
    try:
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
        out = {}
        for s in client.services.list(filters={"label": f"org.gpuhub.hub={hub.hub_id}"}):
            labels = s.attrs["Spec"].get("Labels") or {}
            every_task = s.tasks()
            tasks = [t for t in every_task if t["DesiredState"] == "running"]
            task = tasks[0] if tasks else None
            template = s.attrs["Spec"]["TaskTemplate"]
            out[labels["org.gpuhub.user"]] = {
                "labels": labels,
                "mounts": template["ContainerSpec"].get("Mounts") or [],
                "reserved": ((template.get("Resources") or {}).get("Reservations") or {}).get("GenericResources"),
                "task_count": len(every_task),
                "task": task,
                "node": nodes.get(task["NodeID"]) if task else None,
            }
        return out
    finally:
        client.close()


def _task_env(rig: SwarmRig, node: str, task: dict) -> dict[str, str]:
    """Environment of the server's PID 1 inside its container on ``node``."""
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    client = rig.nodes[node].client()
    try:
        out = client.containers.get(cid).exec_run(["cat", "/proc/1/environ"]).output
    finally:
        client.close()
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def _open_units(hub) -> dict[str, str]:
    ledger = UsageLedger(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
    try:
        return {a["user"]: a["unit_id"] for a in ledger.open_allocations()}
    finally:
        ledger.engine.dispose()


def form_counts(hub, user: str) -> dict[str, tuple[int, int]]:
    """Profile display name -> (free, size), as the user's spawn form shows them."""
    html = render_form(hub, user)
    found = re.findall(r"<strong>([^<]+)</strong> <span class=\"text-muted\">\((\d+) of (\d+) free", html)
    return {name: (int(free), int(size)) for name, free, size in found}


def test_concurrent_spawns_get_distinct_units_across_nodes(rig, swarm_hub):
    hub = swarm_hub(_config())
    # 5 named units (2 whole GPUs on w-gpu, 3 MIG on w-mig) and 15 spawns at once: 3x as many
    users = [f"u{i:02d}" for i in range(15)]
    hub.create_users(users)
    wanted = {u: ("gpu" if i % 2 else "mig") for i, u in enumerate(users)}
    with ThreadPoolExecutor(len(users)) as pool:
        results = dict(zip(users, pool.map(lambda u: hub.spawn(u, {"profile": wanted[u]}, timeout=120), users)))
    accepted = [u for u, r in results.items() if r.status_code in (201, 202)]
    refused = {u: r for u, r in results.items() if u not in accepted}
    refused_users = sorted(refused)
    print({u: (wanted[u], r.status_code, r.text[:90]) for u, r in results.items()})
    assert all(r.status_code == 503 for r in refused.values()), {u: r.text for u, r in refused.items()}
    assert all("in use" in r.json()["message"] for r in refused.values())
    for u in accepted:
        hub.wait_ready(u, timeout=240)
    assert sorted(wanted[u] for u in accepted) == ["gpu", "gpu", "mig", "mig", "mig"]

    services = _services(rig, hub)
    recorded = _open_units(hub)
    units = []
    for u in accepted:
        svc = services[u]
        env = _task_env(rig, svc["node"], svc["task"])
        kind = "NVIDIA_GPU" if wanted[u] == "gpu" else "NVIDIA_MIG_1G_10GB"
        assert env[f"DOCKER_RESOURCE_{kind}"] == svc["labels"]["org.gpuhub.unit"] == recorded[u]
        # labelling the service with its unit kept the spec and the task: no second task
        assert svc["reserved"] == [{"DiscreteResourceSpec": {"Kind": kind, "Value": 1}}], svc["reserved"]
        assert svc["task_count"] == 1, svc
        assert svc["node"] == ("w-gpu" if wanted[u] == "gpu" else "w-mig")
        assert svc["labels"]["org.gpuhub.node"] == svc["node"]
        # the user's named volumes are mounted as volumes (upstream SwarmSpawner makes them binds)
        kinds = {m["Target"]: m["Type"] for m in svc["mounts"]}
        assert kinds["/home/jovyan/scratch"] == "volume" and kinds["/home/jovyan/my-tutorials"] == "volume", kinds
        units.append(recorded[u])
    assert len(set(units)) == len(units) == 5
    # the options form counts the whole cluster
    counts = form_counts(hub, refused_users[0])
    assert counts["Whole GPU"] == (0, 2) and counts["MIG 1g.10gb"] == (0, 3) and counts["Shared GPU"] == (2, 2), counts

    # shared slots: the hub picks the GPU; two slots, three takers
    hub.create_users(["s1", "s2", "s3"])
    with ThreadPoolExecutor(3) as pool:
        shared = list(pool.map(lambda u: hub.spawn(u, {"profile": "shared"}, timeout=120), ["s1", "s2", "s3"]))
    ok = [u for u, r in zip(["s1", "s2", "s3"], shared) if r.status_code in (201, 202)]
    assert len(ok) == 2, [r.text for r in shared]
    for u in ok:
        hub.wait_ready(u, timeout=240)
    services = _services(rig, hub)
    recorded = _open_units(hub)
    slots = set()
    for u in ok:
        env = _task_env(rig, services[u]["node"], services[u]["task"])
        assert services[u]["node"] == "w-shared"
        assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-5a5a0000-0000-4000-8000-000000000001"
        assert services[u]["labels"]["org.gpuhub.unit"] == recorded[u]
        slots.add(recorded[u])
    assert slots == {f"GPU-5a5a0000-0000-4000-8000-000000000001/slot-{k}" for k in (0, 1)}

    # the servers answer through the hub's proxy, wherever they run
    for u in accepted[:2] + ok[:1]:
        r = hub.api("GET", f"/users/{u}")
        assert r.json()["servers"][""]["ready"]

    # a freed unit is offered again: stop one MIG server and another user gets a MIG
    mig_user = next(u for u in accepted if wanted[u] == "mig")
    hub.stop_server(mig_user)
    retry = next(u for u in refused if wanted[u] == "mig")
    r = _wait(lambda: (lambda r: r if r.status_code in (201, 202) else None)(hub.spawn(retry, {"profile": "mig"})),
              30, "the freed MIG instance offered again", interval=1)
    assert r.status_code in (201, 202)
    hub.wait_ready(retry, timeout=240)


def test_a_full_pool_queues_with_positions_and_the_freed_gpu_goes_to_the_first_in_line(rig, swarm_hub):
    hub = swarm_hub(_config(gpu_queue_max_wait=120), extra=OPEN_METRICS)
    hub.create_users(["g1", "g2", "g3", "watcher"])
    for u in ("g1", "g2"):
        assert hub.spawn(u, {"profile": "gpu"}).status_code in (201, 202)
    for u in ("g1", "g2"):
        hub.wait_ready(u, timeout=240)
    # both whole GPUs are taken: g3 waits in line (the hub's, not a task pending in swarm)
    assert hub.spawn("g3", {"profile": "gpu"}, timeout=120).status_code == 202
    with ThreadPoolExecutor(1) as pool:
        events = pool.submit(hub.progress, "g3", 180)
        # the form shows the line to everyone else
        _wait(lambda: "0 of 2 free, 1 waiting" in render_form(hub, "watcher"), 30, "g3 in line", interval=0.5)
        assert 'gpuhub_queue_length{pool="gpu"} 1.0' in hub_metrics(hub)
        assert "g3" not in _services(rig, hub), "a queued spawn must not leave a pending task in swarm"
        freed = _open_units(hub)["g1"]
        hub.stop_server("g1")
        messages = [e.get("message", "") for e in events.result()]
    assert any("You are #1 of 1 in line" in m for m in messages), messages
    assert events.result()[-1].get("ready"), messages[-3:]
    assert _open_units(hub)["g3"] == freed


def test_unplaceable_spawns_are_told_why_at_once(rig, swarm_hub):
    hub = swarm_hub(_config(mem_guarantee="900G"), extra=OPEN_METRICS)
    hub.create_users(["nobig", "toobig"])
    # no node offers this pool: refused at once, pointing at the way out
    r = hub.spawn("nobig", {"profile": "big"})
    assert r.status_code == 503, r.text
    assert "No node of the swarm offers a MIG 3g.40gb" in r.json()["message"]
    # swarm itself cannot place the task (no node has 900G of memory): reported with swarm's reason
    r = hub.spawn("toobig", {"profile": "cpu"})
    if r.status_code in (201, 202):  # slower than the hub's slow-spawn timeout: read the progress
        events = hub.progress("toobig")
        message = events[-1]["message"]
    else:
        message = r.json()["message"]
    assert "The swarm cannot place your server" in message and "insufficient resources" in message, message
    assert not _services(rig, hub), "the unplaceable service was not removed"
    # both refusals are counted by reason on the hub's own metrics
    assert 'gpuhub_spawn_refusals_total{reason="gpu-unavailable"} 2.0' in hub_metrics(hub)


def test_quota_and_engine_failures_are_told_clearly_and_hold_nothing(rig, swarm_hub):
    quota = {"allowed_profiles": ["mig", "cpu"], "gpu_hours_per_period": 0, "period": "week"}
    hub = swarm_hub(_config(quota_defaults=quota), extra=OPEN_METRICS)
    hub.create_users(["q1"])
    r = hub.spawn("q1", {"profile": "gpu"})
    assert r.status_code == 400 and "gpu" in r.json()["message"], r.text
    r = hub.spawn("q1", {"profile": "mig"})
    assert r.status_code == 403 and "CPU-only" in r.json()["message"], r.text
    r = hub.spawn("q1", {"profile": "no-such-profile"})
    assert r.status_code == 400, r.text
    assert not _services(rig, hub) and not _open_units(hub)

    # the manager's engine does not answer: a readable 503, and the form still renders
    down = swarm_hub(_config(), env={"GPUHUB_DOCKER_HOST": "tcp://127.0.0.1:9"})
    down.create_users(["d1"])
    r = down.spawn("d1", {"profile": "gpu"})
    assert r.status_code == 503 and "engine is not answering" in r.json()["message"], r.text
    assert "Choose what your server gets" in render_form(down, "d1")
    assert not down.user("d1")["servers"]


def test_a_named_server_over_max_gpu_units_is_refused_before_anything_starts(rig, swarm_hub, tmp_path):
    """The admission counts the user's GPU servers as the swarm gate does (live, let through, in
    line): with xena's first named server waiting in line (no node offers its pool yet), a second
    one is over max_gpu_units=1 and is answered 403 before JupyterHub runs the pre_spawn_hook,
    and no service is created for it."""
    markers = tmp_path / "pre-spawn"
    markers.mkdir()
    hook = (
        "import pathlib as _pathlib\n"
        "def _pre_spawn(spawner):\n"
        f"    (_pathlib.Path({str(markers)!r}) / (spawner.user.name + '-' + (spawner.name or 'default'))).touch()\n"
        "c.Spawner.pre_spawn_hook = _pre_spawn\n"
        "c.JupyterHub.allow_named_servers = True\n"
    )
    hub = swarm_hub(_config(gpu_queue_max_wait=120, quota_defaults={"max_gpu_units": 1}), extra=OPEN_METRICS + hook)
    hub.create_users(["xena"])
    r = hub.api("POST", "/users/xena/servers/one", json={"profile": "big"}, timeout=60)
    assert r.status_code == 202, r.text
    _wait(lambda: 'gpuhub_queue_length{pool="mig-3g.40gb"} 1.0' in hub_metrics(hub), 30, "one in line")

    r = hub.api("POST", "/users/xena/servers/two", json={"profile": "big"}, timeout=60)
    assert r.status_code == 403, r.text
    assert r.json()["message"] == (
        "Your quota allows 1 GPU unit at once, and another of your servers is already holding or waiting "
        "in line for one. Stop or cancel that server first, or start a CPU-only server."
    )
    assert sorted(p.name for p in markers.iterdir()) == ["xena-one"], "pre_spawn_hook ran for a refused request"
    assert "two" not in hub.user("xena")["servers"]
    assert "xena" not in _services(rig, hub), "a queued or refused spawn must not leave a service"
    assert 'gpuhub_queue_length{pool="mig-3g.40gb"} 1.0' in hub_metrics(hub)  # one still waits


def _install_gpuhub(node) -> None:
    """Copy the gpuhub package and the FAKE NVML into a rig node (as an operator would pip install)."""
    repo = Path(__file__).resolve().parents[2]
    for src, dest in ((repo / "gpuhub_spawner", "/opt/gpuhub/gpuhub_spawner"), (repo / "tests" / "support" / "fakes", "/opt/gpuhub/fakes")):
        for f in src.rglob("*.py"):  # the subpackages too (core, node, ...)
            node.put_file(f"{dest}/{f.relative_to(src).as_posix()}", f.read_bytes())
    # the `node` extra's NVML binding (nvidia-ml-py is one module): the fake raises its error classes
    node.put_file("/opt/gpuhub/pynvml.py", Path(pynvml.__file__).read_bytes())


NEW_NODE_GPUS = {"gpus": [
    {"uuid": "GPU-cc000000-0000-4000-8000-000000000001", "name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960,
     "mig": [{"uuid": f"MIG-cc00000{i}-0000-4000-8000-000000000001", "name": "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
              "memory_mb": 19968, "slices": 3} for i in range(2)]},
]}


def _gpuhub(node, args: str, nvml: bool = True, stdin_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `gpuhub` on ``node``; ``stdin_env``: {VAR: value} piped in as `printf %s "$VAR" |` (a
    value that never appears on any command line)."""
    env = "PYTHONPATH=/opt/gpuhub"
    if nvml:
        env += " GPUHUB_NVML_MODULE=fakes.fake_nvml_file GPUHUB_FAKE_NVML_FILE=/opt/gpuhub/gpus.json"
    pipe = "".join(f'printf %s "${var}" | ' for var in stdin_env or {})
    return node.sh(f"cd /opt/gpuhub && {pipe}env {env} python3 -m gpuhub_spawner.cli {args} 2>&1", check=False,
                   env=stdin_env)


def test_node_setup_adds_capacity_without_hub_restart_and_cordon_stops_placements(rig, swarm_hub):
    hub = swarm_hub(_config(gpu_profiles=[*PROFILES, {"slug": "mig3g", "display_name": "MIG 3g.20gb",
                                                      "pool": "mig-3g.20gb"}]))
    hub.create_users(["early", "late", "third"])
    r = hub.spawn("early", {"profile": "mig3g"})
    assert r.status_code == 503 and "No node of the swarm offers" in r.json()["message"], r.text

    node = rig.start_node("w-new", 4)
    rig.load_image("gpuhub/singleuser:latest", ["w-new"])
    _install_gpuhub(node)
    node.put_file("/opt/gpuhub/gpus.json", json.dumps(NEW_NODE_GPUS))
    before = node.read_file("/etc/docker/daemon.json")

    # no NVML and no static file: refused, nothing changed
    code, out = _gpuhub(node, "node setup", nvml=False)
    assert code == 2 and "NVML is not available" in out, out
    # a dry run shows the change and changes nothing
    code, out = _gpuhub(node, "node setup --dry-run")
    assert code == 0 and "+    \"NVIDIA_MIG_3G_20GB=MIG-cc000000" in out, out
    assert node.read_file("/etc/docker/daemon.json") == before

    started = time.monotonic()
    token = rig.worker_token()
    # the join token never goes on a command line: a root-only file, or standard input
    code, out = _gpuhub(node, f"node setup --join-token {token} --manager {rig.manager.ip}:2377")
    assert code == 2 and "--join-token-file" in out and token not in out, out
    node.put_file("/root/join-token", token + "\n", mode=0o600)
    code, out = _gpuhub(node, f"node setup --join-token-file /root/join-token --manager {rig.manager.ip}:2377 "
                              f"--advertise-addr {node.ip}")
    assert code == 0, out
    assert token not in out
    config = json.loads(node.read_file("/etc/docker/daemon.json"))
    kept = json.loads(before)
    assert config["bip"] == kept["bip"] and config["default-address-pools"] == kept["default-address-pools"]
    assert config["default-runtime"] == "nvidia"
    assert sorted(config["node-generic-resources"]) == [
        f"NVIDIA_MIG_3G_20GB=MIG-cc00000{i}-0000-4000-8000-000000000001" for i in range(2)
    ]
    toml = node.read_file("/etc/nvidia-container-runtime/config.toml")
    assert 'swarm-resource = "DOCKER_RESOURCE_NVIDIA_MIG_3G_20GB"' in toml
    # idempotent: a second run changes nothing and does not restart Docker
    code, out = _gpuhub(node, f"node setup --join-token-file - --manager {rig.manager.ip}:2377",
                        stdin_env={"JOIN_TOKEN": token})
    assert code == 0 and "already up to date" in out and "already part of a swarm" in out, out

    # the running hub offers the new units (no restart): its form counts them, a user gets one
    done = time.monotonic()
    _wait(lambda: form_counts(hub, "late").get("MIG 3g.20gb") == (2, 2), 10,
          "the new node's MIG 3g.20gb units in the running hub's form", interval=0.25)
    print(f"setup ran {done - started:.1f}s; capacity in the form {time.monotonic() - done:.1f}s later")
    r = hub.spawn("late", {"profile": "mig3g"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("late", timeout=240)
    assert _services(rig, hub)["late"]["node"] == "w-new"

    # cordon: running servers stay, nothing new is placed there
    from gpuhub_spawner.cli import main as gpuhub

    assert gpuhub(["node", "cordon", "w-new", "--docker-host", rig.manager.url]) == 0
    r = hub.spawn("third", {"profile": "mig3g"})
    assert r.status_code == 503 and "No node of the swarm offers" in r.json()["message"], r.text
    assert hub.user("late")["servers"][""]["ready"]
    # drain says who would be interrupted and wants --yes
    assert gpuhub(["node", "drain", "w-new", "--docker-host", rig.manager.url]) == 1
    assert gpuhub(["node", "cordon", "w-new", "--undo", "--docker-host", rig.manager.url]) == 0
    r = _wait(lambda: (lambda r: r if r.status_code in (201, 202) else None)(hub.spawn("third", {"profile": "mig3g"})),
              10, "un-cordoned node offered again")
    hub.wait_ready("third", timeout=240)


def test_setup_refuses_a_malformed_daemon_json_and_changes_nothing(rig):
    node = rig.nodes.get("w-bad") or rig.start_node("w-bad", 5)
    try:
        _install_gpuhub(node)
        node.put_file("/opt/gpuhub/gpus.json", json.dumps(NEW_NODE_GPUS))
        broken = '{\n  "bip": "10.205.0.1/24",\n  "log-driver": "json-file",,\n  "debug": true\n}\n'
        node.put_file("/etc/docker/daemon.json", broken)
        node.sh("rm -f /etc/nvidia-container-runtime/config.toml")
        code, out = _gpuhub(node, "node setup")
        assert code == 2, out
        assert "line 3" in out and '"log-driver": "json-file",,' in out, out
        assert node.read_file("/etc/docker/daemon.json") == broken
        assert node.sh("test -e /etc/nvidia-container-runtime/config.toml", check=False)[0] != 0
        assert "gpuhub" not in node.sh("ls /etc/docker")[1]  # no backup, no half-written file
    finally:
        rig.remove_node("w-bad")


def test_lost_node_frees_its_servers_and_a_restarted_hub_readopts_the_rest(rig, swarm_hub):
    doomed = rig.start_node("w-doomed", 6, generic_resources=["NVIDIA_GPU=GPU-dd000000-0000-4000-8000-000000000001"])
    rig.join(doomed)
    rig.wait_nodes_ready(["w-doomed"])
    rig.load_image("gpuhub/singleuser:latest", ["w-doomed"])
    hub = swarm_hub(_config())
    hub.create_users(["keep", "lost1", "lost2"])
    for u, p in (("keep", "mig"), ("lost1", "gpu"), ("lost2", "gpu")):
        assert hub.spawn(u, {"profile": p}).status_code in (201, 202)
    for u in ("keep", "lost1", "lost2"):
        hub.wait_ready(u, timeout=240)
    on_doomed = [u for u, s in _services(rig, hub).items() if s["node"] == "w-doomed"]
    assert len(on_doomed) == 1, _services(rig, hub)
    victim = on_doomed[0]

    # the hub crashes and comes back: everything running is re-adopted
    hub.kill()
    hub.start()
    for u in ("keep", "lost1", "lost2"):
        assert hub.user(u)["servers"][""]["ready"], u
    assert set(_open_units(hub)) == {"keep", "lost1", "lost2"}

    # the node dies: its user's server is reported stopped and the unit's interval closed
    killed = time.monotonic()
    doomed.container.kill()
    _wait(lambda: not hub.user(victim).get("servers"), 30, f"{victim}'s server reported stopped")
    # its usage interval is closed and its service removed as the hub stops the server
    _wait(lambda: victim not in _open_units(hub) and victim not in _services(rig, hub), 30 - (time.monotonic() - killed),
          f"{victim}'s unit freed (ledger closed, service removed)")
    print(f"lost node: server stopped and unit freed after {time.monotonic() - killed:.1f}s")
    assert hub.user("keep")["servers"][""]["ready"]
    # the operator removes the dead node
    from gpuhub_spawner.cli import main as gpuhub

    rig.remove_node("w-doomed")
    assert gpuhub(["node", "remove", "w-doomed", "--docker-host", rig.manager.url]) == 0
    client = rig.manager_client()
    try:
        assert "w-doomed" not in {n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    finally:
        client.close()


def test_prepull_reports_each_node_and_a_rejected_task_is_reported(rig, swarm_hub, capsys):
    """`gpuhub node prepull` runs the image once on every active node and names the ones that lack it;
    a server placed on such a node is reported with the node's reason at once."""
    from gpuhub_spawner.cli import main as gpuhub

    # joined, with a GPU only it has, but nobody loaded the image there
    empty = rig.start_node("w-empty", 7, generic_resources=["NVIDIA_MIG_2G_20GB=MIG-ee000000-0000-4000-8000-000000000001"])
    rig.join(empty)
    rig.wait_nodes_ready(["w-empty"])
    try:
        code = gpuhub(["node", "prepull", "gpuhub/singleuser:latest", "--docker-host", rig.manager.url,
                       "--timeout", "120"])
        out = capsys.readouterr().out
        assert code == 1, out
        lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
        assert lines["w-empty"].startswith("FAILED") and "gpuhub/singleuser" in lines["w-empty"], out
        for name in ("w-gpu", "w-mig", "w-shared"):
            # "ok", or with the node's own word when the node agent's image is there to ask it (the
            # rig's nodes have no way to docker.io: "already there; not checked")
            assert lines[name] in ("ok", "ok (already there)") or lines[name].startswith(
                ("ok (pulled, ", "ok (already there; not checked for a newer one: ")), out
        client = rig.manager_client()
        assert not client.services.list(filters={"label": "org.gpuhub.prepull"}), "prepull left its service"
        client.close()

        hub = swarm_hub(_config(gpu_profiles=[{"slug": "mig2g", "display_name": "MIG 2g.20gb", "pool": "mig-2g.20gb"}]))
        hub.create_users(["unlucky"])
        r = hub.spawn("unlucky", {"profile": "mig2g"}, timeout=120)
        message = hub.progress("unlucky")[-1]["message"] if r.status_code in (201, 202) else r.json()["message"]
        assert "could not start on node w-empty" in message and "gpuhub/singleuser" in message, message
        assert not _services(rig, hub), "the rejected service was not removed"
        assert "unlucky" not in _open_units(hub)
    finally:
        rig.remove_node("w-empty")
        client = rig.manager_client()
        for n in client.nodes.list():
            if n.attrs["Description"]["Hostname"] == "w-empty":
                client.api.remove_node(n.id, force=True)
        client.close()
