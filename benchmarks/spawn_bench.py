"""GPUDockerSpawner against upstream DockerSpawner (ratios), and the cost of one allocation decision.

1. Spawn: per size N, a fresh real hub per spawner, N users spawning at once, POST -> ready.
2. Allocation: ``Ledger.take`` on 10,000 nodes x 8 GPUs x 7 MIG instances, timed one by one.
One JSON object on stdout (and to --out); progress on stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from importlib.metadata import version
from pathlib import Path
from typing import Any

import docker
import requests

from gpuhub_spawner.core.inventory import Inventory, Unit, units_from_gpus
from gpuhub_spawner.hub.allocator import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from harness import IMAGE, HubProcess, fake_gpus  # noqa: E402

TARGETS = {"ratio_max": 1.05, "alloc_p99_ms": 1.0}
PLAIN, GPU = "docker", "gpu-docker"
SPAWN_TIMEOUT = 600.0
# Both spawners get the same generous timeouts, so a slow machine shows up as time, not failures.
COMMON_EXTRA = (
    "\nc.Spawner.start_timeout = c.Spawner.http_timeout = 600\n"
    "c.DockerSpawner.http_timeout = c.GPUDockerSpawner.http_timeout = 600\n"  # the config sets 120
)
# The three mounts GPUDockerSpawner makes, for plain DockerSpawner ({prefix} is the hub id).
PLAIN_VOLUMES = {
    "{prefix}-tutorials": {"bind": "/home/jovyan/tutorials", "mode": "ro"},
    "{prefix}-{username}-scratch": {"bind": "/home/jovyan/scratch", "mode": "rw"},
    "{prefix}-{username}-my-tutorials": {"bind": "/home/jovyan/my-tutorials", "mode": "rw"},
}


def log(msg: str, *args: Any) -> None:
    print("[bench] " + (msg % args if args else msg), file=sys.stderr, flush=True)


def stats(values: list[float], qs: tuple[int, ...], unit: str, scale: float = 1.0) -> dict[str, float | None]:
    """Nearest-rank percentiles of ``values`` x ``scale``, as {"p50_s": …, "max_s": …} (q=100: max)."""
    ordered = sorted(values)
    return {
        f"{'max' if q == 100 else f'p{q}'}_{unit}": (
            round(ordered[max(1, -(-len(ordered) * q // 100)) - 1] * scale, 3) if ordered else None
        )
        for q in qs
    }


# ---- spawn benchmark ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_hub(spawner: str, n: int, workdir: Path) -> HubProcess:
    """Identical settings for both spawners except the class (and the plain one's mounts)."""
    config = {"image": IMAGE, "gpu_inventory": fake_gpus(n, "bench"), "gpu_queue_max_wait": 0}
    extra = COMMON_EXTRA
    if spawner == PLAIN:
        extra += f"c.DockerSpawner.volumes = {PLAIN_VOLUMES!r}\n"
    return HubProcess(workdir, config, extra, spawner_class=spawner)


def spawn_one(hub: HubProcess, user: str, start: threading.Barrier, every: float) -> tuple[float | None, str]:
    """Seconds from POST to ready, or (None, why it failed)."""
    start.wait(timeout=120)
    t0 = time.perf_counter()
    try:
        r = hub.spawn(user, {"profile": "gpu"}, timeout=SPAWN_TIMEOUT)
    except requests.RequestException as e:
        return None, f"POST failed: {type(e).__name__}"
    if r.status_code not in (201, 202):
        return None, f"POST {r.status_code}: {r.text[:200]}"
    while time.perf_counter() - t0 < SPAWN_TIMEOUT:
        try:
            server = hub.user(user).get("servers", {}).get("")
        except requests.RequestException:
            server = {}  # the hub is busy; ask again
        if server is None:
            return None, "server gone: the spawn failed (see hub log)"
        if server.get("ready"):
            return time.perf_counter() - t0, ""
        time.sleep(every)
    return None, f"not ready after {SPAWN_TIMEOUT:.0f}s"


def stop_all(hub: HubProcess, users: list[str]) -> None:
    def stop(user: str) -> None:
        try:
            hub.stop_server(user, timeout=300)
        except (AssertionError, requests.RequestException) as e:
            log("could not stop %s: %s", user, e)

    with cf.ThreadPoolExecutor(min(len(users), 16)) as pool:
        list(pool.map(stop, users))


def cleanup(hub: HubProcess, client: docker.DockerClient) -> None:
    """hub.cleanup, plus plain DockerSpawner's containers (named after the hub id, unlabelled)."""
    hub.cleanup(client)
    for lister, kw in ((client.containers.list, {"all": True}), (client.volumes.list, {})):
        for obj in lister(filters={"name": hub.hub_id}, **kw):
            try:
                obj.remove(force=True)
            except docker.errors.APIError as e:
                log("could not remove %s: %s", obj.name, e)


def time_spawns(hub: HubProcess, label: str, n: int, busy: dict[str, Any], cleanup_hub) -> dict[str, Any]:
    """Start ``hub``, spawn N users at once (POST -> ready), stop them, ``cleanup_hub()``; summary.

    ``busy`` is what was recorded about the machine beforehand; the hub's own CPU is added.
    """
    users = [f"b{i:03d}" for i in range(n)]
    interval = max(0.25, n / 20)  # at most ~20 polls/s: the polls cost the hub CPU too
    try:
        hub.start()
        hub.create_users(users)
        barrier = threading.Barrier(n)
        cpu0 = cpu_seconds(hub.proc.pid)
        with cf.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda u: spawn_one(hub, u, barrier, interval), users))
        busy["hub_cpu_s"] = round(cpu_seconds(hub.proc.pid) - cpu0, 2)  # the hub's own work
        stop_all(hub, users)
        if any(t is None for t, _ in results):
            log("%s x%d: failures; hub log tail:\n%s", label, n, hub.log_tail(40))
    finally:
        cleanup_hub()
    times = [t for t, _ in results if t is not None]
    errors = sorted({e for _, e in results if e})
    summary: dict[str, Any] = {"ok": len(times), "failed": n - len(times), "errors": errors[:5]}
    summary.update(stats(times, (50, 95, 100), "s"), **busy)
    log("%s x%d: %s", label, n, summary)
    return summary


def run_spawns(spawner: str, n: int, root: Path, client: docker.DockerClient) -> dict[str, Any]:
    hub = make_hub(spawner, n, root / f"{spawner}-{n}")
    # other work on the machine skews both spawners alike only if it is steady: record it
    busy = {"load1_before": round(os.getloadavg()[0], 2), "other_containers": len(client.containers.list())}
    log("%s x%d: hub %s starting (%s)", spawner, n, hub.hub_id, busy)
    return time_spawns(hub, spawner, n, busy, lambda: cleanup(hub, client))


def spawn_benchmark(sizes: list[int], client: docker.DockerClient) -> dict[str, Any]:
    client.containers.run(IMAGE, "true", remove=True)  # warm the image's layers once
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpuhub-bench-") as tmp:
        for i, n in enumerate(sizes):
            order = [PLAIN, GPU] if i % 2 == 0 else [GPU, PLAIN]  # alternate against drift
            row: dict[str, Any] = {"n": n, "order": order}
            for spawner in order:
                row[spawner] = run_spawns(spawner, n, Path(tmp, str(i)), client)  # fresh data dir
            plain, gpu = row[PLAIN], row[GPU]
            for q in ("p50", "p95"):  # ratio = gpu / plain
                a, b = gpu[f"{q}_s"], plain[f"{q}_s"]
                row[f"ratio_{q}"] = round(a / b, 3) if a is not None and b else None
            ratios = (row["ratio_p50"], row["ratio_p95"])
            ok = plain["failed"] == gpu["failed"] == 0
            row["met"] = ok and all(r is not None and r <= TARGETS["ratio_max"] for r in ratios)
            rows.append(row)
    return {"sizes": rows, "met": bool(rows) and all(r["met"] for r in rows)}


# ---- allocation benchmark -------------------------------------------------------------


def build_inventory(nodes: int, gpus: int, migs: int) -> Inventory:
    """Distinct, well-formed GPU and MIG UUIDs, each GPU with ``migs`` 1g.10gb instances."""
    units: list[Unit] = []
    for n in range(nodes):
        for g in range(gpus):
            ids = f"{n:08x}-{g:04x}"
            mig = [{"uuid": f"MIG-{ids}-{m:04x}-8000-{n:012x}", "profile": "1g.10gb"} for m in range(migs)]
            gpu = {"uuid": f"GPU-{ids}-4000-8000-000000000000", "mig": mig}
            units.extend(units_from_gpus([gpu], node=f"node-{n:05d}"))
    return Inventory(tuple(units))


def alloc_benchmark(decisions: int, nodes: int = 10_000, gpus: int = 8, migs: int = 7) -> dict[str, Any]:
    log("allocation: building %d x %d x %d units", nodes, gpus, migs)
    t0 = time.perf_counter()
    inventory = build_inventory(nodes, gpus, migs)
    t1 = time.perf_counter()
    ledger = Ledger(inventory)
    t2 = time.perf_counter()
    pool = "mig-1g.10gb"
    held = [f"fill-{i}" for i in range(inventory.pool_size(pool) // 2)]
    for holder in held:  # half full, as a busy cluster would be
        ledger.take(pool, holder)
    # a restarted hub rebuilds its ledger from the labels (hold), then decides
    restarted = Ledger(inventory)
    t3 = time.perf_counter()
    for holder, unit_id in ledger.holders().items():
        restarted.hold(unit_id, holder)
    rebuild_s = time.perf_counter() - t3
    t = time.perf_counter_ns()
    restarted.take(pool, "after-restart")
    first_ns = time.perf_counter_ns() - t
    rng = random.Random(42)
    takes: list[int] = []
    releases: list[int] = []
    for i in range(decisions):
        t = time.perf_counter_ns()
        ledger.take(pool, f"h-{i}")
        takes.append(time.perf_counter_ns() - t)
        held.append(f"h-{i}")
        gone = held.pop(rng.randrange(len(held)))
        t = time.perf_counter_ns()
        ledger.release(gone)
        releases.append(time.perf_counter_ns() - t)
    result = {
        "units": len(inventory.units),
        "inventory_build_s": round(t1 - t0, 3),
        "ledger_build_s": round(t2 - t1, 3),
        "decisions": decisions,
        "take": stats(takes, (50, 99, 100), "us", 1e-3),
        "release": stats(releases, (50, 99, 100), "us", 1e-3),
        "restart_rebuild_s": round(rebuild_s, 3),
        "restart_first_take_ms": round(first_ns / 1e6, 3),
    }
    result["met"] = result["take"]["p99_us"] <= TARGETS["alloc_p99_ms"] * 1000
    log("allocation: %s", result)
    return result


# ---- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,40", help="spawns at once per run ('' skips)")
    parser.add_argument("--decisions", type=int, default=20_000, help="timed allocation decisions")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    client = docker.from_env(timeout=120) if sizes else None
    machine = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jupyterhub": version("jupyterhub"),
        "dockerspawner": version("dockerspawner"),
        "docker_engine": client.version().get("Version") if client else None,
        "image": IMAGE,
    }
    report: dict[str, Any] = {"machine": machine, "targets": TARGETS}
    report["alloc"] = alloc_benchmark(args.decisions)
    report["spawn"] = spawn_benchmark(sizes, client) if client else {"sizes": [], "met": None}
    report["met"] = {"spawn_ratio": report["spawn"]["met"], "alloc_p99": report["alloc"]["met"]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
