"""GPUSwarmSpawner against upstream SwarmSpawner on the multi-node rig, and node set-up time.

1. Spawn: per size N, a fresh real hub per spawner on the same rig (tests/support/swarm_rig.py: a
   manager and two GPU workers as dockerd containers, FAKE GPUs as generic resources), N users
   spawning at once, POST -> ready.  Both request one NVIDIA_GPU generic resource per server;
   upstream gets it from ``extra_resources_spec`` and its port from the task (benchmarks/
   rig_swarmspawner.py).  Upstream mounts no volumes (its named-volume mounts fail; see
   DESIGN.md), ours mounts the user's three: that work counts against GPUSwarmSpawner.
2. Node set-up: `gpuhub node setup` (FAKE NVML) on a fresh node while a hub runs, to the first
   spawn the hub accepts on the new pool.
One JSON object on stdout (and to --out); progress on stderr.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import IMAGE, HubProcess  # noqa: E402
from spawn_bench import time_spawns  # noqa: E402
from swarm_rig import SwarmRig, fake_whole_gpus  # noqa: E402

TARGETS = {"ratio_max": 1.05}
PLAIN, GPU = "swarm", "gpu-swarm"
PER_WORKER = 16


def make_hub(rig: SwarmRig, spawner: str, workdir: Path) -> HubProcess:
    extra = "\nc.Spawner.start_timeout = c.Spawner.http_timeout = 600\n"
    if spawner == PLAIN:
        extra += (
            "c.JupyterHub.spawner_class = 'rig_swarmspawner.RigSwarmSpawner'\n"
            # the same mutual TLS to the manager as the gpuhub hub (README, "Swarm")
            "from gpuhub_spawner.core.dockerhost import require_mutual_tls\n"
            f"c.SwarmSpawner.client_kwargs = {{'base_url': {rig.manager_tls_url!r}, 'tls': require_mutual_tls("
            f"{rig.manager_tls_url!r}, {rig.hub_env()!r}, 'bench').client_tls()}}\n"
            f"c.SwarmSpawner.image = {IMAGE!r}\n"
            "c.SwarmSpawner.cmd = ['start-singleuser.sh']\n"
            "c.SwarmSpawner.extra_resources_spec = {'generic_resources': {'NVIDIA_GPU': 1}}\n"
            "c.SwarmSpawner.extra_endpoint_spec = {'ports': [{'Protocol': 'tcp', 'TargetPort': 8888, "
            "'PublishMode': 'host'}]}\n"
            "c.SwarmSpawner.extra_task_spec = {'restart_policy': {'Condition': 'none'}}\n"
            "c.SwarmSpawner.prefix = c.GPUDockerSpawner.prefix\n"
        )
        hub = HubProcess(workdir, {"gpu_queue_max_wait": 0}, extra, spawner_class="gpu-docker")
    else:
        hub = HubProcess(workdir, {"gpu_queue_max_wait": 0}, extra, spawner_class="gpu-swarm")
    hub.env.update({
        "GPUHUB_SPAWNER": "swarm", **rig.hub_env(), "GPUHUB_HUB_IP": rig.gateway,
        "PYTHONPATH": str(ROOT / "benchmarks"),
    })
    return hub


def remove_services(rig: SwarmRig, prefix: str) -> None:
    """Remove a run's services and wait until swarm has let go of their tasks (and GPUs):
    tasks of a removed service linger for a moment, and the next run must start empty."""
    client = rig.manager_client()
    try:
        for s in client.services.list(filters={"name": prefix}):
            s.remove()
        deadline = time.monotonic() + 180
        while client.api.tasks(filters={"desired-state": "running"}) and time.monotonic() < deadline:
            time.sleep(0.5)
        while _containers_left(rig) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        client.close()


def _containers_left(rig: SwarmRig) -> int:
    left = 0
    for name, node in rig.nodes.items():
        if name != "manager":
            client = node.client()
            try:
                left += len(client.api.containers())  # ids only: no inspect of a vanishing one
            finally:
                client.close()
    return left


def run_spawns(rig: SwarmRig, spawner: str, n: int, root: Path) -> dict[str, Any]:
    hub = make_hub(rig, spawner, root / f"{spawner}-{n}")

    def cleanup_hub() -> None:
        hub.stop()
        remove_services(rig, hub.hub_id)

    return time_spawns(hub, spawner, n, {}, cleanup_hub)


def setup_benchmark(rig: SwarmRig, root: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "swarm"))
    from test_swarm_spawner import NEW_NODE_GPUS, _gpuhub, _install_gpuhub, form_counts

    hub = HubProcess(root / "setup", {"gpu_queue_max_wait": 0, "gpu_profiles": [
        {"slug": "mig3g", "display_name": "MIG 3g.20gb", "pool": "mig-3g.20gb"}]}, "", spawner_class="gpu-swarm")
    hub.env.update({"GPUHUB_SPAWNER": "swarm", **rig.hub_env(), "GPUHUB_HUB_IP": rig.gateway})
    node = rig.start_node("w-setup", 9)
    try:
        hub.start()
        hub.create_users(["probe"])
        rig.load_image(IMAGE, ["w-setup"])
        _install_gpuhub(node)
        node.put_file("/opt/gpuhub/gpus.json", json.dumps(NEW_NODE_GPUS))
        t0 = time.perf_counter()
        node.put_file("/root/join-token", rig.worker_token(), mode=0o600)
        code, out = _gpuhub(node, f"node setup --join-token-file /root/join-token --manager {rig.manager.ip}:2377 "
                                  f"--advertise-addr {node.ip}")
        t_setup = time.perf_counter() - t0
        if code != 0:
            return {"error": out[-500:]}
        while time.perf_counter() - t0 < 120:
            if form_counts(hub, "probe").get("MIG 3g.20gb") == (2, 2):
                break
            time.sleep(0.1)
        t_visible = time.perf_counter() - t0
        r = hub.spawn("probe", {"profile": "mig3g"})
        if r.status_code in (201, 202):
            hub.wait_ready("probe", timeout=300)
        t_running = time.perf_counter() - t0
        hub.stop_server("probe", timeout=120)
        return {"setup_command_s": round(t_setup, 2), "setup_to_capacity_in_form_s": round(t_visible, 2),
                "capacity_after_setup_s": round(t_visible - t_setup, 2),
                "setup_to_server_ready_on_new_node_s": round(t_running, 2), "spawn_status": r.status_code}
    finally:
        hub.stop()
        remove_services(rig, hub.hub_id)
        rig.remove_node("w-setup")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,30")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-setup", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    host = docker.from_env(timeout=600)
    rig = SwarmRig(host, prefix="gpuhub-bench")
    result: dict[str, Any] = {"benchmark": "swarm", "targets": TARGETS, "gpus": 2 * PER_WORKER}
    try:
        rig.create_network()
        manager = rig.start_node("manager", 0)
        rig.serve_mutual_tls(manager)
        rig.init_swarm(manager)
        for i, name in enumerate(("w1", "w2"), start=1):
            rig.join(rig.start_node(name, i, generic_resources=[
                f"NVIDIA_GPU={u}" for u in fake_whole_gpus(f"{i}b", PER_WORKER)]))
        rig.wait_nodes_ready(["manager", "w1", "w2"])
        mc = rig.manager_client()
        node = next(n for n in mc.nodes.list() if n.attrs["Description"]["Hostname"] == "manager")
        node.update(dict(node.attrs["Spec"], Availability="drain"))
        mc.close()
        rig.load_image(IMAGE, ["w1", "w2"])
        rows = []
        with tempfile.TemporaryDirectory(prefix="gpuhub-swarm-bench-") as tmp:
            for i, n in enumerate(sizes):
                order = [PLAIN, GPU] if i % 2 == 0 else [GPU, PLAIN]
                row: dict[str, Any] = {"n": n, "order": order}
                for spawner in order:
                    row[spawner] = run_spawns(rig, spawner, n, Path(tmp, str(i)))
                for q in ("p50", "p95"):
                    a, b = row[GPU][f"{q}_s"], row[PLAIN][f"{q}_s"]
                    row[f"ratio_{q}"] = round(a / b, 3) if a is not None and b else None
                ok = row[GPU]["failed"] == row[PLAIN]["failed"] == 0
                row["met"] = ok and all(row[f"ratio_{q}"] is not None and row[f"ratio_{q}"] <= TARGETS["ratio_max"]
                                        for q in ("p50", "p95"))
                rows.append(row)
            result["spawn"] = rows
            if not args.no_setup:
                result["node_setup"] = setup_benchmark(rig, Path(tmp))
    finally:
        rig.teardown()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
