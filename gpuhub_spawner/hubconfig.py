"""Helpers for ``jupyterhub_config.py``: read settings from the environment, check them early.

Everything here runs while the hub loads its config, so a bad setting stops the hub at
start with a message that names the setting and the fix, instead of failing a user's spawn.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from .inventory import Inventory, InventoryError, profiles_from_config, units_from_gpus
from .volumes import check_source


class ConfigError(Exception):
    """A setting that cannot work; the message names it and says how to fix it."""


def env_json(name: str, default: Any) -> Any:
    """JSON from environment variable ``name``; ``@/path`` reads the JSON from a file."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    where = name
    if raw.startswith("@"):
        path = Path(raw[1:])
        where = f"{name} (file {path})"
        try:
            raw = path.read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read it ({e.strerror}). Point {name} at a readable file.") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}). Fix the JSON.") from None


def env_number(name: str, default: float, minimum: float = 0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number. Set it to a number such as {default:g}.") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}.")
    return value


def secret_file(path: Path, nbytes: int = 32) -> tuple[str, bool]:
    """A secret kept in ``path``: read it, or generate one (mode 0600) on first use. Returns (secret, new).

    The directory is made mode 0700 when it has to be created. The secret is never logged.
    """
    if path.exists():
        return path.read_text().strip(), False
    secret = secrets.token_urlsafe(nbytes)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret, True


def shared_password(data_dir: Path, name: str = "shared-password") -> tuple[str, bool]:
    """A sign-in password kept in ``data_dir/name`` (generated on first use). Returns (password, new)."""
    return secret_file(data_dir / name, 12)


def admin_credential_path(directory: Path, name: str) -> Path:
    """Where admin ``name``'s generated password is kept: ``directory/name``, or ConfigError.

    Names that are not one plain file name (empty, '.', '..', '/', spaces, commas, control
    characters) are refused: they could not be a hub username anyway.
    """
    bad = not name or name in (".", "..") or name.startswith(".") or any(
        ch in name for ch in "/\\ ,"
    ) or any(ord(ch) < 32 for ch in name)
    if bad:
        raise ConfigError(
            f"GPUHUB_ADMIN_USERS: {name[:40]!r} is not a username. Give comma-separated plain "
            "usernames, e.g. GPUHUB_ADMIN_USERS=prof,ta1."
        )
    return directory / name


def docker_bridge_gateway(default: str = "127.0.0.1") -> str:
    """The host's address on Docker's default bridge: reachable from containers, not from outside."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        network = client.networks.get("bridge")
        for cfg in network.attrs.get("IPAM", {}).get("Config") or []:
            if cfg.get("Gateway"):
                return cfg["Gateway"]
            if cfg.get("Subnet"):
                # dockerd gives the bridge the subnet's first address unless told otherwise
                subnet = ipaddress.ip_network(cfg["Subnet"], strict=False)
                if subnet.version == 4:
                    return str(next(subnet.hosts()))
    except Exception as e:  # noqa: BLE001 - engine down: spawns will say so clearly
        print(f"gpuhub: cannot read Docker's bridge network ({e}); hub API on {default}", file=sys.stderr)
    return default


def check_spawner_config(section: Any, require_pools: bool = True) -> Inventory:
    """Build the inventory and profiles from ``c.GPUDockerSpawner`` now, or raise ConfigError."""
    gpus = section.get("gpu_inventory", []) if hasattr(section, "get") else []
    replicas = section.get("gpu_replicas_per_gpu", 1) if hasattr(section, "get") else 1
    profiles = section.get("gpu_profiles", []) if hasattr(section, "get") else []
    prefix = "c.GPUDockerSpawner."
    try:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise InventoryError("gpu_replicas_per_gpu", f"{replicas!r} is not a whole number ≥ 1", "Use e.g. 4.")
        inventory = Inventory(tuple(units_from_gpus(gpus, replicas)))
        profiles_from_config(profiles, inventory, require_pools=require_pools)
    except InventoryError as e:
        raise ConfigError(f"{prefix}{e}") from None
    source = section.get("tutorials_source", "") if hasattr(section, "get") else ""
    problem = check_source("tutorials_source", source or "")
    if problem:
        raise ConfigError(prefix + problem)
    return inventory


def fail(message: str) -> None:
    """Stop the hub at start with one clear line (no traceback)."""
    print(f"gpuhub: configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)
