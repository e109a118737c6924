"""Helpers for ``jupyterhub_config.py``: the deprecated ``GPUHUB_*`` variables, checks run early.

Settings live in gpuhub.yaml (:mod:`gpuhub_spawner.core.config`); for one release the variables
of earlier releases are still read here (:data:`ENVIRONMENT` maps each onto its key) and laid
over the file. Everything here runs while the hub loads its config, so a bad setting stops the
hub at start with a message that names the setting and the fix, instead of failing a user's spawn.
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
from gpuhub_spawner.core.sizes import suggestion
from gpuhub_spawner.core.volumes import check_source


class ConfigError(Exception):
    """A setting that cannot work; the message names it and says how to fix it."""


def env_json(name: str, default: Any, environ: Mapping[str, str] | None = None) -> Any:
    """JSON from environment variable ``name``; ``@/path`` reads the JSON from a file."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
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


def env_number(name: str, default: float, minimum: float = 0, maximum: float | None = None, environ: Mapping[str, str] | None = None) -> float:
    """A number from environment variable ``name`` (``default`` when unset or blank), in range."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
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


def env_int(name: str, default: int, minimum: int, maximum: int, environ: Mapping[str, str] | None = None) -> int:
    """A whole number from environment variable ``name`` (``default`` when unset or blank), in range."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
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


def env_port(name: str, default: int | None, environ: Mapping[str, str] | None = None) -> int | None:
    """A TCP port from environment variable ``name`` (1-65535); ``default`` when unset or blank."""
    raw = (os.environ if environ is None else environ).get(name, "")
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


def env_quota(name: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Quota defaults as JSON from environment variable ``name``, checked field by field."""
    values = env_json(name, {}, environ)
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


def plain_username(name: str) -> bool:
    """One plain file name: not empty, '.', '..', hidden, and no '/', spaces, commas or control characters."""
    return not (
        not name
        or name.startswith(".")
        or any(ch in name for ch in "/\\ ,")
        or any(ord(ch) < 32 for ch in name)
    )


def admin_credential_path(directory: Path, name: str) -> Path:
    """Where admin ``name``'s generated password is kept: ``directory/name``, or ConfigError.

    Names that are not one plain file name (empty, '.', '..', '/', spaces, commas, control
    characters) are refused: they could not be a hub username anyway.
    """
    if not plain_username(name):
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
    quotas do, so what passes here is what a spawn gets (the one size grammar, :mod:`.sizes`).
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


def error_line(message: str) -> str:
    """The one line a configuration problem is shown as (the hub and ``gpuhub config check``)."""
    return f"gpuhub: configuration error: {message}"


def fail(*messages: str) -> None:
    """Stop the hub at start with one clear line per problem (no traceback)."""
    for message in messages:
        print(error_line(message), file=sys.stderr)
    raise SystemExit(2)


# ---- the environment variables of earlier releases, laid over gpuhub.yaml ------------------
# (variable, key in gpuhub.yaml, reader). Each reader checks the value in today's words and
# returns what the key takes. Secrets (GITHUB_CLIENT_SECRET, JUPYTERHUB_CRYPT_KEY,
# GPUHUB_TUTORIALS_TOKEN, GPUHUB_WEBHOOK_SECRET) stay in the environment and are not listed.


def _text(name: str, environ: Mapping[str, str]) -> str:
    return environ[name].strip()


def _names(name: str, environ: Mapping[str, str]) -> list[str]:
    return [part.strip() for part in environ[name].split(",") if part.strip()]


def _switch(name: str, environ: Mapping[str, str]) -> bool:
    return environ[name].strip().lower() not in ("off", "0", "false", "no")


def _port_reader(default: int) -> Any:
    return lambda name, environ: env_port(name, default, environ)


def _profiles(name: str, environ: Mapping[str, str]) -> Any:
    profiles = env_json(name, [], environ)
    check_profile_limits(profiles)
    for entry in profiles if isinstance(profiles, list) else []:
        _new_size_form(entry)
    return profiles


def _quota(name: str, environ: Mapping[str, str]) -> Any:
    return _new_size_form(env_quota(name, environ))


def _new_size_form(entry: Any) -> Any:
    """An old size form ("4Gi", "512m") of ``entry["mem_limit"]`` in the grammar gpuhub.yaml takes."""
    if isinstance(entry, dict) and isinstance(entry.get("mem_limit"), str):
        fix = suggestion(entry["mem_limit"])
        if fix is not None:
            entry["mem_limit"] = int(fix) if fix.isdigit() else fix
    return entry


def _total_mb(name: str, environ: Mapping[str, str]) -> int:
    return int(env_number(name, 10240, minimum=1, environ=environ)) * 1024**2


ENVIRONMENT: tuple[tuple[str, str, Any], ...] = (
    ("GPUHUB_DATA_DIR", "hub.data_dir", _text),
    ("GPUHUB_BIND_URL", "hub.bind_url", _text),
    ("GPUHUB_HUB_IP", "hub.ip", _text),
    ("GPUHUB_HUB_PORT", "hub.port", _port_reader(8081)),
    ("GPUHUB_PROXY_API_PORT", "hub.proxy_api_port", _port_reader(8001)),
    ("GPUHUB_DB_URL", "hub.db_url", _text),
    ("GPUHUB_USAGE_DB_URL", "hub.usage_db_url", _text),
    ("GPUHUB_SPAWNER", "hub.spawner", lambda n, e: "swarm" if e[n].strip() == "swarm" else "docker"),
    ("GPUHUB_DOCKER_HOST", "hub.docker_host", _text),
    ("GPUHUB_USER_NETWORK", "hub.user_network", _text),
    ("GPUHUB_USER_FIREWALL", "hub.user_firewall", _switch),
    ("GPUHUB_EXTRA_CONFIG", "hub.extra_config", _text),
    ("GPUHUB_IMAGE", "images.default", _text),
    ("GPUHUB_GPU_DISCOVERY", "inventory.discovery", _text),
    ("GPUHUB_GPU_INVENTORY", "inventory.gpus", lambda n, e: env_json(n, [], e)),
    ("GPUHUB_REPLICAS_PER_GPU", "inventory.replicas_per_gpu", lambda n, e: env_int(n, 1, 1, 64, e)),
    ("GPUHUB_QUEUE_MAX_WAIT", "inventory.queue_max_wait", lambda n, e: env_number(n, 300, 0, 24 * 3600, e)),
    ("GPUHUB_FAIR_SHARE_HALF_LIFE", "inventory.fair_share_half_life",
     lambda n, e: env_number(n, 24, 0, 24 * 365, e)),
    ("GPUHUB_PROFILES", "profiles", _profiles),
    ("GPUHUB_QUOTA_DEFAULTS", "quota_defaults", _quota),
    ("GPUHUB_ADMIN_USERS", "sign_in.admin_users", _names),
    ("GITHUB_CLIENT_ID", "sign_in.github.client_id", _text),
    ("GPUHUB_OAUTH_CALLBACK_URL", "sign_in.github.callback_url", _text),
    ("GPUHUB_GITHUB_ORGS", "sign_in.github.orgs", _names),
    ("GPUHUB_ALLOWED_USERS", "sign_in.github.allowed_users", _names),
    ("GPUHUB_GITHUB_ADMIN_TEAMS", "sign_in.github.admin_teams", _names),
    ("GPUHUB_TUTORIALS", "tutorials.source", _text),
    ("GPUHUB_TUTORIALS_REPO", "tutorials.repo", _text),
    ("GPUHUB_TUTORIALS_BRANCH", "tutorials.branch", _text),
    ("GPUHUB_TUTORIALS_STORE", "tutorials.store", _text),
    ("GPUHUB_TUTORIALS_POLL_INTERVAL", "tutorials.poll_interval", lambda n, e: env_number(n, 60, 1, 24 * 3600, e)),
    ("GPUHUB_TUTORIALS_MAX_TOTAL_MB", "tutorials.max_total_size", _total_mb),
    ("GPUHUB_TUTORIALS_MAX_FILES", "tutorials.max_files", lambda n, e: int(env_number(n, 100000, 1, None, e))),
    ("GPUHUB_TUTORIAL_SYNC_PORT", "tutorials.port", _port_reader(8765)),
    ("GPUHUB_ADMIN_SERVICE_PORT", "services.admin_port", _port_reader(8766)),
    ("GPUHUB_EXPORTER_PORT", "metrics.exporter_port", _port_reader(8768)),
    ("GPUHUB_PROMETHEUS_TOKEN_FILE", "metrics.prometheus_token_file", _text),
    ("GPUHUB_PROMETHEUS_URL", "metrics.prometheus_url", _text),
    ("GPUHUB_CULLER", "culler.enabled", _switch),
    ("GPUHUB_CULLER_PORT", "culler.port", _port_reader(8767)),
    ("GPUHUB_CULLER_CONFIG", "culler.config_file", _text),
    ("GPUHUB_GPU_AGENT_URLS", "culler.gpu_agent_urls", _names),
    ("GPUHUB_GPU_AGENT_TOKEN_FILE", "culler.gpu_agent_token_file", _text),
)
#: set by the upstream projects themselves: read, but not deprecated
UPSTREAM = {"GITHUB_CLIENT_ID"}


def setting_name(key: str, environ: Mapping[str, str] | None = None) -> str:
    """What to call the setting of ``key`` in a message: its deprecated variable where that set it."""
    environ = os.environ if environ is None else environ
    for name, known, _read in ENVIRONMENT:
        if known == key and environ.get(name, "").strip():
            return name
    return key


def env_overlay(raw: dict[str, Any], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Lay the variables set in ``environ`` over ``raw`` (gpuhub.yaml, parsed) in place.

    Returns (variable, key) of each one that is deprecated, for a notice. A blank variable
    counts as unset (as it always did). Raises ConfigError in today's words for a bad value.
    """
    used: list[tuple[str, str]] = []
    for name, key, read in ENVIRONMENT:
        if not environ.get(name, "").strip():
            continue
        section = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(section.get(part), dict):
                section[part] = {}
            section = section[part]
        section[last] = read(name, environ)
        if name == "GITHUB_CLIENT_ID":
            raw["sign_in"]["authenticator"] = "github"
        if name not in UPSTREAM:
            used.append((name, key))
    return used
