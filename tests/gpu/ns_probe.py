"""What gpuhub's node side sees from where it runs, as one JSON line: the compute processes NVML
lists (gpuhub_spawner.node.nvml.sample_devices) and the agent's verdict on its PID view
(gpuhub_spawner.node.cgroup.pid_view).  The GPU checks run it on the host and inside
``unshare --pid --fork --mount-proc`` and compare.

    python ns_probe.py [--proc /proc]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def probe(proc: str) -> dict:
    from gpuhub_spawner.node.attribution import process_pids
    from gpuhub_spawner.node.cgroup import pid_view
    from gpuhub_spawner.node.nvml import NVMLUnavailable, load_nvml, sample_devices

    view = pid_view(proc)
    doc: dict = {"pid": os.getpid(), "host_pid_view": view.host, "reason": view.reason}
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        doc["nvml_error"] = str(e)
        return doc
    t0 = time.perf_counter()
    devices = sample_devices(nvml)
    doc["sample_seconds"] = round(time.perf_counter() - t0, 4)
    doc["pids"] = sorted(process_pids(devices))
    doc["used_bytes"] = {
        str(p.pid): p.used_bytes
        for d in devices
        for p in d.processes + [q for m in d.mig for q in m.processes]
    }
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proc", default="/proc")
    args = parser.parse_args()
    print(json.dumps(probe(args.proc)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
