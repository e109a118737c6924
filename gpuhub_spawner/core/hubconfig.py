"""Helpers for ``jupyterhub_config.py``: read settings from the environment, check them early.

Everything here runs while the hub loads its config, so a bad setting stops the hub at
start with a message that names the setting and the fix, instead of failing a user's spawn.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuhub_spawner.core.inventory import Inventory, InventoryError, profiles_from_config, units_from_gpus
from gpuhub_spawner.core.quotas import QuotaError, parse_quota
from gpuhub_spawner.core.volumes import check_source


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
            raise ConfigError(
                f"{where}: cannot read it ({e.strerror}). Point {name} at a readable file."
            ) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}). Fix the JSON."
        ) from None


def env_number(name: str, default: float, minimum: float = 0, maximum: float | None = None) -> float:
    """A number from environment variable ``name`` (``default`` when unset or blank), in range."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw[:40]!r} is not a number. Set it to a number such as {default:g}."
        ) from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        most = f" and at most {maximum:g}" if maximum is not None else ""
        raise ConfigError(f"{name}={raw[:40]!r} is out of range. Set it to at least {minimum:g}{most}.")
    return value


def env_int(name: str, default: int, minimum: int, maximum: int) -> int:
    """A whole number from environment variable ``name`` (``default`` when unset or blank), in range."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", raw):
        raise ConfigError(
            f"{name}={raw[:40]!r} is not a whole number. Set it to a whole number from {minimum} to {maximum},"
            f" such as {default}."
        )
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"{name}={raw!r} is out of range. Set it to a whole number from {minimum} to {maximum}."
        )
    return value


def env_port(name: str, default: int | None) -> int | None:
    """A TCP port from environment variable ``name`` (1-65535); ``default`` when unset or blank."""
    raw = os.environ.get(name, "")
    if raw.strip() and raw != raw.strip():
        raise ConfigError(
            f"{name}={raw[:40]!r} has spaces around it. Set it to a port number such as {default or 8000}."
        )
    if not raw.strip():
        return default
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise ConfigError(
            f"{name}={raw[:40]!r} is not a port. Set it to a port number from 1 to 65535, such as {default or 8000}."
        )
    return int(raw)


def env_quota(name: str) -> dict[str, Any]:
    """Quota defaults as JSON from environment variable ``name``, checked field by field."""
    values = env_json(name, {})
    check_quota(values, name)
    return values


def check_quota(values: Any, setting: str) -> None:
    """Raise ConfigError naming ``setting`` and the key when ``values`` is not a valid quota."""
    try:
        parse_quota(values)
    except QuotaError as e:
        raise ConfigError(f"{setting}: {e}. Fix the value of {e.field!r} (or remove it).") from None


def read_token_file(name: str, path: str, min_length: int = 16) -> str:
    """The token kept in file ``path`` (named by setting ``name``), or ConfigError saying how to fix it."""
    fix = f"Put a random token in it (e.g. `openssl rand -hex 32 > {path}`), or unset {name}."
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not text"
        raise ConfigError(f"{name}: cannot read the token file {path} ({reason}). {fix}") from None
    if len(token) < min_length:
        raise ConfigError(f"{name}: the token in {path} is shorter than {min_length} characters. {fix}")
    return token


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
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(ch in name for ch in "/\\ ,")
        or any(ord(ch) < 32 for ch in name)
    )
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


def check_profile_limits(profiles: Any) -> None:
    """Each profile's ``mem_limit`` and ``cpu_limit``: the quota grammar and range, no "unlimited".

    The spawner reads a profile's memory with :func:`gpuhub_spawner.core.quotas.parse_bytes`, as the
    quotas do, so what passes here is what a spawn gets ("4G", "4Gi", "512M", bytes).
    """
    if not isinstance(profiles, (list, tuple)):
        return  # profiles_from_config says what is wrong with it
    for i, entry in enumerate(profiles):
        if not isinstance(entry, Mapping):
            continue
        for key in ("mem_limit", "cpu_limit"):
            value = entry.get(key)
            if value is None:
                continue
            where = f"c.GPUDockerSpawner.gpu_profiles[{i}] (GPUHUB_PROFILES) {key}"
            try:
                parsed = parse_quota({key: value}).get(key)
            except QuotaError as e:
                message = e.message.replace(" (or 'unlimited')", "")
                raise ConfigError(f"{where}: {message}. Fix the profile, or leave {key} out.") from None
            if parsed is None:
                example = "'4G'" if key == "mem_limit" else "2"
                raise ConfigError(
                    f"{where}: {value!r} is not a limit. Give one such as {example}, or leave {key} out."
                )


def check_spawner_config(section: Any, require_pools: bool = True) -> Inventory:
    """Build the inventory and profiles from ``c.GPUDockerSpawner`` now, or raise ConfigError."""
    gpus = section.get("gpu_inventory", []) if hasattr(section, "get") else []
    replicas = section.get("gpu_replicas_per_gpu", 1) if hasattr(section, "get") else 1
    profiles = section.get("gpu_profiles", []) if hasattr(section, "get") else []
    prefix = "c.GPUDockerSpawner."
    check_profile_limits(profiles)
    quota = section.get("quota_defaults", {}) if hasattr(section, "get") else {}
    check_quota(quota, f"{prefix}quota_defaults (GPUHUB_QUOTA_DEFAULTS)")
    try:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise InventoryError(
                "gpu_replicas_per_gpu", f"{replicas!r} is not a whole number ≥ 1", "Use e.g. 4."
            )
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
