"""The ``gpuhub`` command for operators.

    gpuhub inventory [--static FILE] [--replicas N]   what this host offers, as JSON
    gpuhub doctor [--image NAME]                      is this host ready to run servers?
    gpuhub node inventory|setup|cordon|drain|remove|prepull   swarm GPU nodes (see nodecli)
    gpuhub config check FILE                          is this gpuhub.yaml valid? (exit 2 if not)
    gpuhub config example                             a commented full gpuhub.yaml
    gpuhub deploy [--config FILE] [--render] [--dry-run]   the stack on a swarm manager (deploy/stack)
    gpuhub status [--config FILE] [--json]            services, nodes, pools, queue (see status/)
    gpuhub backup|restore|upgrade [--stack NAME]      the hub's state (see gpuhub_spawner/ops)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from typing import Any

from gpuhub_spawner.core.hubconfig import ConfigError, env_json
from gpuhub_spawner.core.inventory import Inventory, InventoryError, default_profiles, units_from_gpus
from gpuhub_spawner.node.nodecli import SetupError, add_node_commands
from gpuhub_spawner.node.nvml import NVMLUnavailable, discover_gpus, load_nvml

#: the manager's commands: (module, function adding them, their names).  Imported when the
#: parser is built, so a GPU node whose install has only what `gpuhub node ...` needs (core and
#: node) still runs those; the others then say what is missing instead of a traceback.
MANAGER_COMMANDS = (
    ("gpuhub_spawner.deploy.deploycli", "add_deploy_command", ("deploy",)),
    ("gpuhub_spawner.status", "add_status_command", ("status",)),
    ("gpuhub_spawner.ops.commands", "add_ops_commands", ("backup", "restore", "upgrade")),
)


def _add_manager_commands(sub: Any) -> None:
    import importlib

    for module, adder, names in MANAGER_COMMANDS:
        try:
            add = getattr(importlib.import_module(module), adder)
        except ImportError as e:
            missing = e.name or str(e)

            def unavailable(args: argparse.Namespace, missing: str = missing) -> int:
                print(f"gpuhub {args.command}: this installation lacks {missing}, which it needs: install "
                      "gpuhub with its dependencies (pip install gpuhub) on this machine", file=sys.stderr)
                return 2

            for name in names:
                stub = sub.add_parser(name, help=f"(needs {missing}, missing here)")
                stub.set_defaults(func=unavailable, command=name, any_arguments=True)
            continue
        add(sub)


def _described_gpus(static: str | None) -> tuple[list, str]:
    if static:
        with open(static) as f:
            return json.load(f), f"static file {static}"
    try:
        nvml = load_nvml()
    except NVMLUnavailable as e:
        gpus = env_json("GPUHUB_GPU_INVENTORY", [])
        return gpus, f"GPUHUB_GPU_INVENTORY (NVML unavailable: {e})"
    try:
        return discover_gpus(nvml), "NVML"
    finally:
        nvml.nvmlShutdown()


def cmd_inventory(args: argparse.Namespace) -> int:
    gpus, source = _described_gpus(args.static)
    inventory = Inventory(tuple(units_from_gpus(gpus, args.replicas)))
    out = {
        "source": source,
        "pools": {name: len(units) for name, units in inventory.pools.items()},
        "profiles": [p.slug for p in default_profiles(inventory)],
        "units": [asdict(u) for u in inventory.units],
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[tuple[str, bool, str]] = []
    try:
        import docker

        client = docker.from_env(timeout=10)
        info = client.info()
        checks.append(("docker engine", True, f"{info.get('ServerVersion')} ({info.get('Driver')})"))
        try:
            client.images.get(args.image)
            checks.append(("single-user image", True, args.image))
        except docker.errors.ImageNotFound:
            checks.append(("single-user image", False, f"{args.image} missing: run images/build.sh"))
    except Exception as e:  # noqa: BLE001 - report, don't crash
        checks.append(("docker engine", False, f"not reachable ({e}); start dockerd"))
    hook = shutil.which("nvidia-container-runtime-hook")
    checks.append(
        (
            "NVIDIA hook on this shell's PATH",
            bool(hook),
            hook or "absent: dockerd needs nvidia-container-runtime-hook on its PATH for GPU requests",
        )
    )
    try:
        nvml = load_nvml()
        count = nvml.nvmlDeviceGetCount()
        nvml.nvmlShutdown()
        checks.append(("NVML", True, f"{count} GPU(s)"))
    except NVMLUnavailable as e:
        checks.append(("NVML", False, f"{e}; the static inventory will be used"))
    for name, ok, detail in checks:
        print(f"[{'ok' if ok else '!!'}] {name}: {detail}")
    return 0 if all(ok for name, ok, _ in checks if name in ("docker engine", "single-user image")) else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a gpuhub.yaml alone (no environment, nothing started), in the hub's own words."""
    from gpuhub_spawner.core.config import ConfigFileError, check_file
    from gpuhub_spawner.core.hubconfig import error_line

    try:
        check_file(args.file)
    except ConfigFileError as e:
        for line in e.lines:
            print(error_line(line), file=sys.stderr)
        return 2
    print("ok")
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from gpuhub_spawner.core.config_example import EXAMPLE

    sys.stdout.write(EXAMPLE)
    return 0


def add_config_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="check gpuhub.yaml, or print an example of it")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a gpuhub.yaml without starting anything")
    check.add_argument("file", help="the gpuhub.yaml to check")
    check.set_defaults(func=cmd_config_check)
    example = config_sub.add_parser("example", help="print a commented full gpuhub.yaml")
    example.set_defaults(func=cmd_config_example)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuhub", description="gpuhub operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("inventory", help="show the GPU units this host offers")
    inv.add_argument("--static", help="JSON file with a static GPU list instead of NVML")
    inv.add_argument("--replicas", type=int, default=1, help="time-slicing slots per non-MIG GPU")
    inv.set_defaults(func=cmd_inventory)
    doc = sub.add_parser("doctor", help="check that this host can run servers")
    doc.add_argument("--image", default="gpuhub/singleuser:latest")
    doc.set_defaults(func=cmd_doctor)
    add_node_commands(sub)
    add_config_commands(sub)
    _add_manager_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (InventoryError, ConfigError, SetupError, NVMLUnavailable, OSError, json.JSONDecodeError) as e:
        print(f"gpuhub: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
