"""The hub-managed services' specs and roles, built from gpuhub.yaml's sections (pure: no I/O).

``jupyterhub_config.py`` appends what these return to ``c.JupyterHub.services`` and
``c.JupyterHub.load_roles``. Each role holds only the scopes its service uses (the comments
say why each is needed). Secrets never go on a command line: the environment, or a file path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuhub_spawner.core.config import Culler, Tutorials

Spec = dict[str, Any]


def _service(name: str, port: int, module: str, environment: Mapping[str, str], **extra: Any) -> Spec:
    return {
        "name": name,
        "display": False,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", module],
        "environment": dict(environment),
        **extra,
    }


def _role(name: str, scopes: list[str], service: str | None = None) -> Spec:
    return {"name": name, "scopes": scopes, "services": [service or name]}


def admin(port: int, environment: Mapping[str, str]) -> tuple[Spec, Spec]:
    """The "GPU Hub" admin service: hub admins only, a page and a JSON API."""
    service = _service(
        "gpuhub-admin", port, "hub_services.admin", environment,
        display=True,  # in the Services menu
        oauth_no_confirm=True,  # the hub's own admin-only service: no consent page
        # what the page may do as the signed-in admin, with the token the hub gives their
        # browser for it (never more than that admin may do): create roster users and undo
        # them, create groups and set members and quotas, stop servers
        oauth_client_allowed_scopes=["admin:users", "admin:groups", "delete:servers"],
    )
    # its own token only reads users, groups and servers. Changes are made with the admin's
    # own token (above): creating users needs admin:users, which JupyterHub 6 has no
    # narrower scope for and which includes every user's auth state (GitHub tokens).
    role = _role("gpuhub-admin", ["list:users", "read:users", "read:servers", "list:groups", "read:groups"])
    return service, role


def tutorial_sync(tutorials: Tutorials, store: Path, secrets: Mapping[str, str]) -> Spec:
    """Publish a Git branch to the store that servers mount.

    It needs no hub API access at all: no role, so its token holds no scopes. Its status page
    is for admins and whoever holds access:services!service=tutorial-sync (e.g. a role for a
    "tutorial-authors" group); its metrics for a read:metrics token; the webhook is signed.
    """
    service = _service(
        "tutorial-sync", tutorials.port, "hub_services.tutorial_sync", secrets,
        oauth_no_confirm=True,  # the hub's own service: its status page asks no consent
    )
    service["command"] += [
        "--repo", tutorials.repo,
        "--branch", tutorials.branch,
        "--store", str(store),
        "--poll-interval", f"{tutorials.poll_interval:g}",
        # a commit over these is not published (the status page says why)
        "--max-total-mb", str(tutorials.max_total_mb),
        "--max-files", str(tutorials.max_files),
    ]
    return service


def tutorial_sync_status_url(tutorials: Tutorials) -> str:
    return f"http://127.0.0.1:{tutorials.port}/services/tutorial-sync/status.json"


def exporter_reads_tutorial_sync() -> Spec:
    """The exporter reads tutorial-sync's status.json for its gpuhub_tutorial_sync_status_* series."""
    return _role("gpuhub-exporter-reads-tutorial-sync", ["access:services!service=tutorial-sync"], "gpuhub-exporter")


def spawner_environment(spawner: Any) -> dict[str, str]:
    """What the exporter needs of the spawner's final settings (after the extra config)."""
    return {
        "GPUHUB_USAGE_DB_URL": spawner.get("usage_db_url", ""),
        "GPUHUB_QUOTA_DEFAULTS": json.dumps(spawner.get("quota_defaults", {})),
        "GPUHUB_GPU_INVENTORY": json.dumps(spawner.get("gpu_inventory", [])),
        "GPUHUB_GPU_DISCOVERY": spawner.get("gpu_discovery", "auto"),
        "GPUHUB_REPLICAS_PER_GPU": str(spawner.get("gpu_replicas_per_gpu", 1)),
        "GPUHUB_PROFILES": json.dumps(spawner.get("gpu_profiles", [])),
    }


def swarm_environment(spawner: Any, swarm: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """Pool capacity from the swarm's nodes and tasks, read from the manager as the hub does."""
    env = {
        "GPUHUB_SPAWNER": "swarm",
        "GPUHUB_HUB_ID": swarm.get("gpu_hub_id") or spawner.get("gpu_hub_id", "gpuhub"),
    }
    client_kwargs = swarm.get("client_kwargs") or spawner.get("client_kwargs") or {}
    if client_kwargs.get("base_url"):
        env["GPUHUB_DOCKER_HOST"] = client_kwargs["base_url"]
    # services get a clean environment: pass the Docker client's own settings on
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        if environ.get(key):
            env[key] = environ[key]
    return env


def exporter(port: int, environment: Mapping[str, str]) -> tuple[Spec, Spec]:
    """The per-user metrics exporter; read-only: users with a server, their groups and servers, group quotas."""
    service = _service("gpuhub-exporter", port, "hub_services.exporter", environment)
    role = _role("gpuhub-exporter", ["list:users", "read:users:groups", "read:servers", "list:groups", "read:groups"])
    return service, role


def prometheus(token: str) -> tuple[Spec, Spec]:
    """Prometheus's token: read:metrics only (/hub/metrics and the services' metrics)."""
    return {"name": "prometheus", "api_token": token}, _role("gpuhub-prometheus", ["read:metrics"], "prometheus")


def culler(settings: Culler, spawner: Any, environment: Mapping[str, str]) -> tuple[Spec, Spec]:
    """The GPU-aware idle culler, with the spawner's final usage database, quotas and hub id."""
    env = {
        "GPUHUB_USAGE_DB_URL": spawner.get("usage_db_url", ""),
        "GPUHUB_QUOTA_DEFAULTS": json.dumps(spawner.get("quota_defaults", {})),
        "GPUHUB_HUB_ID": spawner.get("gpu_hub_id", "gpuhub"),
        "GPUHUB_GPU_AGENT_URLS": ",".join(settings.gpu_agent_urls),
        # the agents' bearer token (a file path, never the token itself)
        "GPUHUB_GPU_AGENT_TOKEN_FILE": settings.gpu_agent_token_file,
        **environment,
    }
    service = _service("gpuhub-culler", settings.port, "hub_services.culler", env)
    if settings.config_file:
        service["command"] += ["--config", settings.config_file]
    service["command"] += settings.command_options()
    # users with servers, their activity and groups; group quotas; stop servers. No
    # access:servers: its token never goes to a user's server (kernels are asked from
    # inside the container with the server's own token). It cannot create, change or
    # delete users or groups.
    role = _role("gpuhub-culler", [
        "list:users", "read:users:activity", "read:users:groups", "read:servers", "read:groups", "delete:servers",
    ])
    return service, role
