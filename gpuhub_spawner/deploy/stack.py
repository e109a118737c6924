"""gpuhub.yaml -> the swarm stack document (pure: no I/O, no secret values).

Services: ``hub`` (JupyterHub + proxy + gpuhub's services, on a manager, the engine's unix
socket bind-mounted: never a TCP Docker API), ``db`` (PostgreSQL), ``registry`` (read-only
for the nodes' pulls; pushes go through a short-lived registry on the manager's loopback),
``caddy`` (HTTPS) and ``prometheus``; with ``tutorials.repo``, ``tutorial-mirror`` (one task
per GPU node: the published tutorials copied into the node's store, the node-local volume
``<stack>_tutorials`` that servers mount read-only; no NFS needed).  Networks:

- ``internal`` (overlay, ``internal: true``): hub (alias ``proxy`` for the proxy's public port),
  db, registry, caddy, prometheus, tutorial-mirror (gpuhub's own code on the GPU nodes: it
  fetches the bundle from the proxy with a token that may read nothing else).  No user server
  is ever attached to it.
- ``users`` (overlay, attachable): user servers and the hub API (alias ``<stack>-hub``), nothing else.
- ``edge`` (overlay): what must publish a port on its node or reach outside (caddy, registry,
  prometheus scraping the node agents, the hub's culler asking them about servers on their
  nodes); there is no IPVS here, so ports are published in host mode.

Every service resolves by DNS round robin (``endpoint_mode: dnsrr``): without IPVS a
service's virtual IP does not answer.  Secrets are swarm secrets named ``<stack>_<name>_<version>``
(a new value is a new name, so a rotation never clashes with the running one) and read by the
images' entrypoints from ``NAME_FILE`` variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from gpuhub_spawner.core.config import GPUHubConfig
from gpuhub_spawner.deploy import grafana
from gpuhub_spawner.node import tutorial_mirror

HUB_IMAGE = "gpuhub/hub:latest"
IMAGES = {
    "hub": HUB_IMAGE,
    "db": "gpuhub/postgres:latest",
    "registry": "gpuhub/registry:latest",
    "caddy": "gpuhub/caddy:latest",
    "prometheus": "gpuhub/prometheus:latest",
}
DATA_DIR = "/srv/gpuhub/data"
CONFIG_PATH = "/etc/gpuhub/gpuhub.yaml"
HUB_PORT = 8081
PROXY_PORT = 8000
REGISTRY_DATA = "/var/lib/docker-registry"
DB_DATA = "/var/lib/postgresql/data"
DB_USER = "gpuhub"
#: the tutorial mirror's image: the node agent's, which every GPU node holds already (the agent
#: needs it there), so the stack's registry does not carry it
MIRROR_IMAGE = "gpuhub/node-agent:latest"
#: the GPU nodes, as the operator labels them (also how Prometheus finds the node agents)
GPU_NODES = "node.labels.gpuhub.gpu == true"
MIRROR_TOKEN = "tutorial_mirror_token"
#: where the mirror sees the node's store (a named volume: Docker makes it on each node at first
#: use, for the mirror and for a server alike, so no host path has to be made beforehand)
MIRROR_STORE = "/srv/gpuhub/tutorials"
SOCKET = "/var/run/docker.sock"
#: where the hub writes its health URL (the proxy's internal address is known only at start)
HEALTH_URL_FILE = "/tmp/gpuhub-health-url"
HUB_HEALTH = (
    "import urllib.request as r; "
    f"r.urlopen(open('{HEALTH_URL_FILE}').read().strip(), timeout=4)"
)
#: the secrets the stack may use, and the variable of the hub that names each one's file
HUB_SECRET_VARIABLES = {
    "crypt_key": "JUPYTERHUB_CRYPT_KEY_FILE",
    "github_client_secret": "GITHUB_CLIENT_SECRET_FILE",
    "webhook_secret": "GPUHUB_WEBHOOK_SECRET_FILE",
    "tutorials_token": "GPUHUB_TUTORIALS_TOKEN_FILE",
    "db_password": "PGPASSWORD_FILE",
}


def secrets_needed(cfg: GPUHubConfig, optional: tuple[str, ...] = ()) -> list[str]:
    """The secrets this config's stack uses (``optional``: those the operator happens to have)."""
    deploy = _deploy(cfg)
    names = ["crypt_key", "prometheus_token", "agent_token"]
    if cfg.sign_in.authenticator == "github":
        names.append("github_client_secret")
    if cfg.tutorials.repo:
        names += ["webhook_secret", MIRROR_TOKEN]
    if "tutorials_token" in optional and cfg.tutorials.repo:
        names.append("tutorials_token")
    if deploy.database == "postgres":
        names.append("db_password")
    if deploy.tls.mode == "files":
        names += ["tls_cert", "tls_key"]
    if deploy.grafana_image:
        names.append(grafana.SECRET)
    return names


def tutorials_volume(cfg: GPUHubConfig) -> str:
    """The node-local volume of the mirrored tutorials: its name on every node, which the hub's
    spawner mounts read-only (``tutorials.source``) and the node's mirror writes."""
    return f"{_deploy(cfg).stack_name}_tutorials"


def secret_name(stack: str, name: str, version: str) -> str:
    """The swarm secret's name: a new version is a new name (swarm secrets are immutable)."""
    return f"{stack}_{name}_{version}"


def db_url(cfg: GPUHubConfig) -> str:
    """The hub's database in the stack: PostgreSQL without a password in the URL (libpq reads
    ``PGPASSWORD``, which the hub image's entrypoint makes from the secret), or sqlite."""
    if _deploy(cfg).database == "sqlite":
        return ""
    return f"postgresql+psycopg://{DB_USER}@db:5432/{DB_USER}"


def hub_config(cfg: GPUHubConfig) -> dict[str, Any]:
    """The gpuhub.yaml the hub (and its services) read in the stack: the operator's file with
    what the stack decides laid over it (spawner, database, data directory, token files)."""
    deploy = _deploy(cfg)
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    hub = raw.setdefault("hub", {})
    hub.update({
        "spawner": "swarm", "ip": "0.0.0.0", "port": HUB_PORT, "data_dir": DATA_DIR,
        "bind_url": f"http://0.0.0.0:{PROXY_PORT}", "user_network": f"{deploy.stack_name}_users",
        "user_firewall": False,
    })
    if db_url(cfg):
        hub["db_url"] = hub["usage_db_url"] = db_url(cfg)
    metrics = raw.setdefault("metrics", {})
    metrics["prometheus_token_file"] = "/run/secrets/prometheus_token"
    metrics.setdefault("exporter_port", 8768)
    metrics.setdefault("prometheus_url", "http://prometheus:9090")  # the stack's: the GPU Hub page's charts
    culler = raw.setdefault("culler", {})
    culler.setdefault("gpu_agent_token_file", "/run/secrets/agent_token")
    if cfg.tutorials.repo:
        # servers mount the node's store, which the node's mirror writes (not the hub's store)
        raw["tutorials"].update(source=tutorials_volume(cfg), mirror_token_file=f"/run/secrets/{MIRROR_TOKEN}")
    if cfg.sign_in.authenticator == "github" and not cfg.sign_in.github.callback_url:
        raw["sign_in"].setdefault("github", {})["callback_url"] = f"{deploy.public_url}/hub/oauth_callback"
    raw.setdefault("deploy", {})["public_url"] = deploy.public_url
    return raw


def render(
    cfg: GPUHubConfig,
    versions: Mapping[str, str] | None = None,
    config_version: str = "1",
    manager: str = "",
    file_versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The stack document for ``docker stack deploy -c``.

    ``versions``: the version of each secret (default "1"); ``config_version``: the hub config's;
    ``manager``: the manager's hostname, which pins the stateful services to the node holding
    their volumes (empty: any manager, as in the committed example); ``file_versions``: those of
    the Grafana files (:mod:`.grafana`), when ``deploy.grafana_image`` asks for Grafana.
    """
    deploy = _deploy(cfg)
    stack = deploy.stack_name
    needed = secrets_needed(cfg, tuple(versions or ()))
    versions = {name: (versions or {}).get(name, "1") for name in needed}
    place = ["node.role == manager"] + ([f"node.hostname == {manager}"] if manager else [])
    services = {
        "hub": _hub(cfg, needed, place),
        "caddy": _caddy(cfg, place),
        "registry": _registry(cfg, place),
        "prometheus": _prometheus(place),
    }
    if deploy.database == "postgres":
        services["db"] = _db(place)
    if cfg.tutorials.repo:
        services["tutorial-mirror"] = _mirror()
    configs = {"gpuhub_yaml": {"external": True, "name": f"{stack}_gpuhub_yaml_{config_version}"}}
    if deploy.grafana_image:
        services["grafana"] = grafana.service(deploy.grafana_image, deploy.public_url, place, _swarm(place))
        configs.update(grafana.config_names(stack, file_versions))
    return {
        "version": "3.8",
        "services": dict(sorted(services.items())),
        "networks": {
            "internal": {"driver": "overlay", "internal": True},
            "users": {"driver": "overlay", "attachable": True},
            "edge": {"driver": "overlay"},
        },
        "volumes": {name: ({"name": tutorials_volume(cfg)} if name == "tutorials" else {}) for name in _volumes(cfg)},
        "secrets": {n: {"external": True, "name": secret_name(stack, n, v)} for n, v in versions.items()},
        "configs": configs,
    }


def to_yaml(document: Mapping[str, Any], source: str = "gpuhub.yaml") -> str:
    """The document as YAML, with a header saying where it comes from."""
    head = (
        f"# The gpuhub stack, rendered from {source} by `gpuhub deploy --render` (do not edit:\n"
        "# change gpuhub.yaml and render again). `gpuhub deploy` creates the secrets and the config\n"
        "# named below and deploys it; deploy/stack/README.md says how to do that by hand.\n"
    )
    return head + yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False, width=100)


# ---- the services ------------------------------------------------------------------------


def _deploy(cfg: GPUHubConfig):
    if cfg.deploy is None:
        raise ValueError("gpuhub.yaml has no deploy: section (gpuhub config example shows one)")
    return cfg.deploy


def _http_check(port: int, path: str, host: str = "127.0.0.1") -> list[str]:
    """A health check with bash alone (the images carry no curl): GET answers 2xx or 3xx."""
    script = (
        f"exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 "
        "&& head -1 <&3 | grep -q ' [23][0-9][0-9] '"
    )
    return ["CMD", "bash", "-c", script]


def _health(test: list[str], start: str = "30s") -> dict[str, Any]:
    return {"test": test, "interval": "15s", "timeout": "5s", "retries": 3, "start_period": start}


def _restart(condition: str = "any") -> dict[str, Any]:
    # any: also after a clean exit (a hub that stops is never what the workshop wants). No
    # max_attempts: a service that gave up stays down after its cause (the database, a full
    # disk) is gone; the delay keeps a crash loop slow, and `gpuhub deploy` names it on timeout
    return {"condition": condition, "delay": "5s", "window": "60s"}


def _swarm(place: list[str], update: str = "stop-first") -> dict[str, Any]:
    return {
        "replicas": 1,
        "endpoint_mode": "dnsrr",
        "placement": {"constraints": list(place)},
        "restart_policy": _restart(),
        "update_config": {"order": update, "failure_action": "rollback"},
    }


def _secret(name: str, target: str | None = None) -> dict[str, Any]:
    return {"source": name, "target": target or name}


def _hub(cfg: GPUHubConfig, needed: list[str], place: list[str]) -> dict[str, Any]:
    stack = _deploy(cfg).stack_name
    env = {"GPUHUB_CONFIG": CONFIG_PATH, "GPUHUB_STACK": stack}
    env.update({var: f"/run/secrets/{n}" for n, var in HUB_SECRET_VARIABLES.items() if n in needed})
    hub_secrets = [n for n in needed if n in HUB_SECRET_VARIABLES or n in ("prometheus_token", "agent_token", MIRROR_TOKEN)]
    return {
        "image": IMAGES["hub"],
        # the hub's own name resolves in its container (/etc/hosts) before it is healthy: swarm's
        # DNS lists a task only once it is, and the proxy and services reach the hub by this name
        "hostname": f"{stack}-hub",
        "environment": dict(sorted(env.items())),
        "configs": [{"source": "gpuhub_yaml", "target": CONFIG_PATH}],
        "secrets": [_secret(n) for n in hub_secrets],
        "volumes": [
            f"hub-data:{DATA_DIR}",
            # the manager's engine, on its unix socket: nothing listens on the network
            {"type": "bind", "source": SOCKET, "target": SOCKET},
        ],
        # edge: the culler reaches the node agents (<node address>:9469) for the kernel probes
        # and notices of servers on other nodes, and their GPU activity
        "networks": {"internal": {"aliases": ["proxy"]}, "users": {"aliases": [f"{stack}-hub"]}, "edge": {}},
        # /hub/health through the proxy, at the internal address the hub wrote at start (inhub.py)
        "healthcheck": _health(["CMD", "python3", "-c", HUB_HEALTH], start="120s"),
        "stop_grace_period": "30s",
        "deploy": _swarm(place),
    }


def _caddy(cfg: GPUHubConfig, place: list[str]) -> dict[str, Any]:
    deploy = _deploy(cfg)
    env = {
        "GPUHUB_DOMAIN": deploy.domain,
        "GPUHUB_TLS": deploy.tls.mode,
        "GPUHUB_UPSTREAM": f"proxy:{PROXY_PORT}",
    }
    if deploy.tls.mode == "acme":
        env["GPUHUB_ACME_EMAIL"] = deploy.tls.acme_email
    if deploy.grafana_image:
        env["GPUHUB_GRAFANA_UPSTREAM"] = f"grafana:{grafana.PORT}"
    service: dict[str, Any] = {
        "image": IMAGES["caddy"],
        "environment": env,
        # host mode: there is no IPVS routing mesh; the public name points at this node
        "ports": [
            {"target": 80, "published": 80, "protocol": "tcp", "mode": "host"},
            {"target": 443, "published": 443, "protocol": "tcp", "mode": "host"},
        ],
        "volumes": ["caddy-data:/var/lib/caddy"],
        "networks": ["internal", "edge"],
        "healthcheck": _health(["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/443"]),
        "deploy": _swarm(place, update="stop-first"),
    }
    if deploy.tls.mode == "files":
        service["secrets"] = [_secret("tls_cert"), _secret("tls_key")]
    return service


def _registry(cfg: GPUHubConfig, place: list[str]) -> dict[str, Any]:
    return {
        "image": IMAGES["registry"],
        # read-only: anyone on the cluster's network (a user's server included) may pull, nobody
        # may push; `gpuhub deploy` pushes through a registry on the manager's loopback only
        "environment": {"GPUHUB_REGISTRY_READONLY": "true"},
        "ports": [{"target": 5000, "published": _deploy(cfg).registry_port, "protocol": "tcp", "mode": "host"}],
        "volumes": [f"registry-data:{REGISTRY_DATA}"],
        "networks": ["internal", "edge"],
        "healthcheck": _health(_http_check(5000, "/v2/")),
        "deploy": _swarm(place),
    }


def _prometheus(place: list[str]) -> dict[str, Any]:
    return {
        "image": IMAGES["prometheus"],
        "volumes": [
            "prometheus-data:/var/lib/prometheus/data",
            # swarm service discovery of the GPU nodes (dockerswarm_sd_configs): the socket, read-only
            {"type": "bind", "source": SOCKET, "target": SOCKET, "read_only": True},
        ],
        "secrets": [_secret("prometheus_token"), _secret("agent_token", "gpuhub-agent-token")],
        "networks": ["internal", "edge"],
        "healthcheck": _health(_http_check(9090, "/-/ready")),
        "deploy": _swarm(place),
    }


def _db(place: list[str]) -> dict[str, Any]:
    return {
        "image": IMAGES["db"],
        "environment": {
            "POSTGRES_USER": DB_USER,
            "POSTGRES_DB": DB_USER,
            "POSTGRES_PASSWORD_FILE": "/run/secrets/db_password",
        },
        "secrets": [_secret("db_password")],
        "volumes": [f"db-data:{DB_DATA}"],
        "networks": ["internal"],
        "healthcheck": _health(["CMD", "pg_isready", "-q", "-h", "/var/run/postgresql"]),
        "stop_grace_period": "60s",
        "deploy": _swarm(place),
    }


def _mirror() -> dict[str, Any]:
    """The tutorial mirror (node/tutorial_mirror.py) on every GPU node: it asks the sync service's
    bundle through the hub's proxy on the internal network (never the users one) and writes the
    node's store: the volume ``tutorials`` (a bind mount would fail where the path is missing)."""
    bundle = f"http://proxy:{PROXY_PORT}/services/tutorial-sync/bundle"
    service = tutorial_mirror.stack_service(MIRROR_IMAGE, bundle, MIRROR_STORE, MIRROR_TOKEN, networks=("internal",))
    service["volumes"] = [f"tutorials:{MIRROR_STORE}"]
    service["deploy"].update(endpoint_mode="dnsrr", placement={"constraints": [GPU_NODES]}, restart_policy=_restart())
    return service


def _volumes(cfg: GPUHubConfig) -> list[str]:
    names = ["hub-data", "registry-data", "prometheus-data", "caddy-data"]
    if _deploy(cfg).database == "postgres":
        names.append("db-data")
    if cfg.tutorials.repo:
        names.append("tutorials")
    if _deploy(cfg).grafana_image:
        names.append("grafana-data")
    return sorted(names)
