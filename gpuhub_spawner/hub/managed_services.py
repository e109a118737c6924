"""The hub-managed services' specs and roles, built from gpuhub.yaml's sections (pure: no I/O).

``jupyterhub_config.py`` appends what these return to ``c.JupyterHub.services`` and
``c.JupyterHub.load_roles``. Each role holds only the scopes its service uses (the comments
say why each is needed). Secrets never go on a command line: the environment, or a file path.

What travels how, and why:

- **gpuhub.yaml, read by the service itself.** Each service gets ``GPUHUB_CONFIG`` (an absolute
  path: services start elsewhere) and reads its settings by trait name
  (:func:`gpuhub_spawner.core.config.file_settings`, the lowest layer of every service), so one
  file drives every process and none of it is copied into a service's environment.
  ``GITHUB_CLIENT_ID`` goes along where set, so the file is checked as the hub checked it.
- **The environment, per-process wiring:** what JupyterHub sets itself (``JUPYTERHUB_*``: port,
  token, prefix), the spawner's hub id, where the agents' token is (a file path), where the
  exporter reads tutorial-sync's status, the Docker client's variables on a swarm, the admin
  pages' template paths, and secrets (tutorial token, webhook secret).
- **The environment or the command line, a value only the hub knows:** a setting whose final
  value differs from what the service reads in the file (:func:`changed`): a default the hub
  computes (the usage database in its data directory, the tutorial store), an operator's change
  in ``hub.extra_config`` (``c.GPUDockerSpawner.quota_defaults = ...``), or a deprecated
  ``GPUHUB_*`` variable the hub read.  It goes in the service's own variable
  (:data:`VARIABLES`, read by ``hub_services/common/base.py``; JSON where structured), or as a
  command-line option where there is none; over the file either way.  A setting emptied
  there does not travel (the service keeps the file's).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gpuhub_spawner.core.config import CULLER_TIMINGS, Culler, GPUHubConfig, Instructors, service_settings
from gpuhub_spawner.core.hubconfig import UPSTREAM

Spec = dict[str, Any]

#: tutorial-sync's settings in gpuhub.yaml, by its trait names
TUTORIAL_SETTINGS = ("repo_url", "branch", "poll_interval", "max_total_mb", "max_files")

#: the services' variables for a setting the hub changed (hub_services/common/base.py reads them)
VARIABLES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "usage_db_url": ("GPUHUB_USAGE_DB_URL", str),
    "quota_defaults": ("GPUHUB_QUOTA_DEFAULTS", json.dumps),
    "gpu_agent_urls": ("GPUHUB_GPU_AGENT_URLS", ",".join),
    "gpu_inventory": ("GPUHUB_GPU_INVENTORY", json.dumps),
    "gpu_discovery": ("GPUHUB_GPU_DISCOVERY", str),
    "gpu_replicas_per_gpu": ("GPUHUB_REPLICAS_PER_GPU", str),
    "gpu_profiles": ("GPUHUB_PROFILES", json.dumps),
    "spawner": ("GPUHUB_SPAWNER", str),
    "docker_host": ("GPUHUB_DOCKER_HOST", str),
}


def file_wiring(environ: Mapping[str, str]) -> dict[str, str]:
    """What lets a service read gpuhub.yaml as the hub did: its absolute path, GITHUB_CLIENT_ID."""
    path = environ.get("GPUHUB_CONFIG", "").strip()
    if not path:
        return {}
    wiring = {"GPUHUB_CONFIG": str(Path(path).resolve())}
    wiring.update({name: environ[name] for name in sorted(UPSTREAM) if environ.get(name, "").strip()})
    return wiring


def changed(final: Mapping[str, Any], from_file: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``final`` (the hub's) that differ from ``from_file`` (what the service
    reads in gpuhub.yaml, :func:`gpuhub_spawner.core.config.file_settings`); empty ones left out."""
    return {k: v for k, v in final.items() if v not in ("", [], {}, None) and from_file.get(k) != v}


def changed_environment(final: Mapping[str, Any], from_file: Mapping[str, Any]) -> dict[str, str]:
    """:func:`changed`, in the services' variables."""
    return {VARIABLES[k][0]: VARIABLES[k][1](v) for k, v in changed(final, from_file).items()}


#: a trait whose command-line option is not its name with dashes
OPTIONS = {"repo_url": "repo"}


def changed_options(final: Mapping[str, Any], from_file: Mapping[str, Any]) -> list[str]:
    """:func:`changed`, as the service's command-line options (``--poll-interval=30``)."""
    return [
        f"--{OPTIONS.get(k, k.replace('_', '-'))}=" + (f"{v:g}" if isinstance(v, float) else str(v))
        for k, v in changed(final, from_file).items()
    ]


def spawner_settings(spawner: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The spawner's final settings (after the extra config), by the services' trait names."""
    settings = {
        "usage_db_url": spawner.get("usage_db_url", ""),
        "quota_defaults": spawner.get("quota_defaults", {}),
        "gpu_inventory": spawner.get("gpu_inventory", []),
        "gpu_discovery": spawner.get("gpu_discovery", "auto"),
        "gpu_replicas_per_gpu": spawner.get("gpu_replicas_per_gpu", 1),
        "gpu_profiles": spawner.get("gpu_profiles", []),
    }
    return {k: v for k, v in settings.items() if names is None or k in names}


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


def admin(port: int, spawner: Any, from_file: Mapping[str, Any], wiring: Mapping[str, str]) -> tuple[Spec, Spec]:
    """The "GPU Hub" admin service: hub admins only, a page and a JSON API."""
    final = spawner_settings(spawner, ("usage_db_url", "quota_defaults"))
    service = _service(
        "gpuhub-admin", port, "hub_services.admin", {**changed_environment(final, from_file), **wiring},
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


def instructor_help(admin_service: Spec, instructors: Instructors) -> list[Spec]:
    """Instructor help on the GPU Hub page (``hub_services/admin/instructor_help.py``): tells the admin
    service the group, and returns the roles to load (none when help is off).

    - the instructors' group may sign in to the admin service (which lets them reach the Help
      tab only: every other route still wants an admin);
    - the service's own token may share a server (``shares``), grant what a share holds
      (``access:servers``: JupyterHub lets a token grant only scopes it has) and list what is
      shared with a helper (``read:users:shares``).  An instructor holds none of these: the
      service decides, per request, that the caller is a helper and the server an attendee's.
    """
    admin_service["command"] += [f"--instructors-group={instructors.group}", f"--help-access={instructors.access}"]
    if not instructors.group:
        return []
    return [
        _role("gpuhub-admin-help", ["shares", "access:servers", "read:users:shares"], admin_service["name"]),
        {"name": "gpuhub-instructors", "scopes": [f"access:services!service={admin_service['name']}"],
         "groups": [instructors.group]},
    ]


def tutorial_sync(
    cfg: GPUHubConfig, store: Path, environment: Mapping[str, str], from_file: Mapping[str, Any]
) -> Spec:
    """Publish a Git branch to the store that servers mount.

    It needs no hub API access at all: no role, so its token holds no scopes. Its status page
    is for admins and whoever holds access:services!service=tutorial-sync (e.g. a role for a
    "tutorial-authors" group); its metrics for a read:metrics token; the webhook is signed.
    Its store is where the hub put it; the rest (repo, branch, poll interval, and the caps
    over which a commit is not published) it reads in gpuhub.yaml.
    """
    service = _service(
        "tutorial-sync", cfg.tutorials.port, "hub_services.tutorial_sync", environment,
        oauth_no_confirm=True,  # the hub's own service: its status page asks no consent
    )
    final = {k: v for k, v in service_settings(cfg).items() if k in TUTORIAL_SETTINGS}
    service["command"] += ["--store", str(store), *changed_options(final, from_file)]
    return service


#: the one scope of the per-node tutorial mirrors: read the sync service's bundle, nothing else
TUTORIAL_BUNDLE_SCOPE = "custom:gpuhub-tutorials:read"


def tutorial_mirror(token: str) -> tuple[Spec, Spec, dict[str, Spec]]:
    """The per-node mirrors' identity (a token-only service), its role, and the custom scope.

    The scope is held by this role alone: not by admins (JupyterHub's admin role has no custom
    scopes), never by users; the sync service's ``bundle`` endpoint asks for it.
    """
    scope = {TUTORIAL_BUNDLE_SCOPE: {"description": "Read the published tutorials (the per-node mirrors)."}}
    return ({"name": "tutorial-mirror", "api_token": token},
            _role("gpuhub-tutorial-mirror", [TUTORIAL_BUNDLE_SCOPE], "tutorial-mirror"), scope)


def tutorial_sync_status_url(tutorials: Any) -> str:
    return f"http://127.0.0.1:{tutorials.port}/services/tutorial-sync/status.json"


def exporter_reads_tutorial_sync() -> Spec:
    """The exporter reads tutorial-sync's status.json for its gpuhub_tutorial_sync_status_* series."""
    return _role("gpuhub-exporter-reads-tutorial-sync", ["access:services!service=tutorial-sync"], "gpuhub-exporter")


def swarm_environment(
    spawner: Any, swarm: Any, environ: Mapping[str, str], from_file: Mapping[str, Any]
) -> dict[str, str]:
    """Pool capacity from the swarm's nodes and tasks, read from the manager as the hub does."""
    client_kwargs = swarm.get("client_kwargs") or spawner.get("client_kwargs") or {}
    env = {
        "GPUHUB_HUB_ID": swarm.get("gpu_hub_id") or spawner.get("gpu_hub_id", "gpuhub"),
        **changed_environment({"spawner": "swarm", "docker_host": client_kwargs.get("base_url", "")}, from_file),
    }
    # services get a clean environment: pass the Docker client's own settings on
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        if environ.get(key):
            env[key] = environ[key]
    return env


def exporter(
    port: int, spawner: Any, from_file: Mapping[str, Any], wiring: Mapping[str, str]
) -> tuple[Spec, Spec]:
    """The per-user metrics exporter; read-only: users with a server, their groups and servers, group quotas.

    It counts capacity and budgets as the spawner does: what of the spawner's final settings
    gpuhub.yaml does not say travels in its environment.
    """
    env = {**changed_environment(spawner_settings(spawner), from_file), **wiring}
    service = _service("gpuhub-exporter", port, "hub_services.exporter", env)
    role = _role("gpuhub-exporter", ["list:users", "read:users:groups", "read:servers", "list:groups", "read:groups"])
    return service, role


def prometheus(token: str) -> tuple[Spec, Spec]:
    """Prometheus's token: read:metrics only (/hub/metrics and the services' metrics)."""
    return {"name": "prometheus", "api_token": token}, _role("gpuhub-prometheus", ["read:metrics"], "prometheus")


def culler(
    settings: Culler, spawner: Any, from_file: Mapping[str, Any], wiring: Mapping[str, str]
) -> tuple[Spec, Spec]:
    """The GPU-aware idle culler, with the spawner's final usage database, quotas and hub id.

    Its timings it reads in gpuhub.yaml; they win over its own ``culler.config_file``.
    """
    final = {**spawner_settings(spawner, ("usage_db_url", "quota_defaults")), "gpu_agent_urls": settings.gpu_agent_urls}
    env = {"GPUHUB_HUB_ID": spawner.get("gpu_hub_id", "gpuhub"), **changed_environment(final, from_file)}
    if settings.gpu_agent_token_file:
        env["GPUHUB_GPU_AGENT_TOKEN_FILE"] = settings.gpu_agent_token_file  # a path, never the token
    service = _service("gpuhub-culler", settings.port, "hub_services.culler", {**env, **wiring})
    if settings.config_file:
        service["command"] += ["--config", settings.config_file]
    service["command"] += changed_options({k: getattr(settings, k) for k in CULLER_TIMINGS}, from_file)
    # users with servers, their activity and groups; group quotas; stop servers. No
    # access:servers: its token never goes to a user's server (kernels are asked from
    # inside the container with the server's own token). It cannot create, change or
    # delete users or groups. It reads what the hub's GPU lines want back.
    role = _role("gpuhub-culler", [
        "list:users", "read:users:activity", "read:users:groups", "read:servers", "read:groups", "delete:servers",
        "custom:gpuhub-lines:read",  # what the GPU lines want back (hub/lines.py)
    ])
    return service, role
