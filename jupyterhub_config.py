# gpuhub's JupyterHub configuration, driven by environment variables.
#
# With nothing set it runs the embedded default: one host, plain Docker, sqlite, the local
# `gpuhub/singleuser` image, the hub on http://127.0.0.1:8000, and sign-in with each person's
# own password (sign up, an admin approves; admins get a generated one in the data directory).
# GPUs come from NVML when the host has it, else from GPUHUB_GPU_INVENTORY; with neither, users
# get CPU-only servers.
#
# Settings (all optional):
#   GPUHUB_DATA_DIR         where the database, cookie secret and admin passwords live (./data)
#   GPUHUB_BIND_URL         public URL the proxy listens on (http://127.0.0.1:8000)
#   GPUHUB_HUB_IP           address of the hub API; default: the user network's gateway
#                           (on a swarm: Docker's bridge gateway)
#   GPUHUB_USER_NETWORK     Docker network of user servers, created at start with
#                           container-to-container traffic off (gpuhub-users)
#   GPUHUB_USER_FIREWALL    "off": do not install the host firewall that lets user servers
#                           reach only the hub API on this host (then do it yourself: README)
#   GPUHUB_HUB_PORT         port of the hub API (8081)
#   GPUHUB_PROXY_API_PORT   port of the proxy's REST API (8001)
#   GPUHUB_DB_URL           database URL (sqlite in GPUHUB_DATA_DIR)
#   GPUHUB_USAGE_DB_URL     GPU usage ledger and per-user quota overrides (sqlite in GPUHUB_DATA_DIR)
#   GPUHUB_IMAGE            single-user image (gpuhub/singleuser:latest)
#   GPUHUB_GPU_DISCOVERY    auto | nvml | static (auto)
#   GPUHUB_GPU_INVENTORY    static GPUs as JSON, or @/path/to/file.json
#   GPUHUB_REPLICAS_PER_GPU time-slicing: servers per non-MIG GPU (1)
#   GPUHUB_PROFILES         profiles as JSON, or @file (default: one per pool + CPU only)
#   GPUHUB_QUEUE_MAX_WAIT   seconds a spawn waits in line for a GPU (300; 0 refuses at once)
#   GPUHUB_QUOTA_DEFAULTS   quota of every user before group properties, JSON ({})
#   GPUHUB_ADMIN_SERVICE_PORT  port of the "GPU Hub" admin service (8766)
#   GPUHUB_TUTORIALS        tutorials volume name or absolute host path (gpuhub-tutorials)
#   GPUHUB_ADMIN_USERS      comma-separated admin usernames (each gets a generated password)
#   GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET, GPUHUB_OAUTH_CALLBACK_URL, GPUHUB_GITHUB_ORGS
#   (orgs or org:team), GPUHUB_ALLOWED_USERS, GPUHUB_GITHUB_ADMIN_TEAMS, JUPYTERHUB_CRYPT_KEY
#                           sign in with GitHub instead of hub passwords
#   GPUHUB_TUTORIALS_REPO   Git URL of the tutorials; starts the tutorial-sync service, which
#                           publishes GPUHUB_TUTORIALS_BRANCH (main) into GPUHUB_DATA_DIR/tutorials
#   GPUHUB_TUTORIALS_TOKEN, GPUHUB_WEBHOOK_SECRET, GPUHUB_TUTORIALS_POLL_INTERVAL (60)
#   GPUHUB_EXPORTER_PORT, GPUHUB_PROMETHEUS_TOKEN_FILE
#                           per-user metrics service and Prometheus's token (see the metrics block)
#   GPUHUB_EXTRA_CONFIG     a Python config file loaded last, for anything else
import json
import os
import sys
from pathlib import Path

from gpuhub_spawner.core import dockerhost, hubconfig

c = get_config()  # noqa: F821 - provided by JupyterHub

here = Path(__file__).resolve().parent
data_dir = Path(os.environ.get("GPUHUB_DATA_DIR", here / "data")).resolve()
data_dir.mkdir(parents=True, exist_ok=True)

try:
    gpu_inventory = hubconfig.env_json("GPUHUB_GPU_INVENTORY", [])
    profiles = hubconfig.env_json("GPUHUB_PROFILES", [])
    hubconfig.check_profile_limits(profiles)
    replicas = hubconfig.env_int("GPUHUB_REPLICAS_PER_GPU", 1, minimum=1, maximum=64)
    queue_wait = hubconfig.env_number("GPUHUB_QUEUE_MAX_WAIT", 300, maximum=24 * 3600)
    quota_defaults = hubconfig.env_quota("GPUHUB_QUOTA_DEFAULTS")
    hub_port = hubconfig.env_port("GPUHUB_HUB_PORT", 8081)
    proxy_api_port = hubconfig.env_port("GPUHUB_PROXY_API_PORT", 8001)
    admin_service_port = hubconfig.env_port("GPUHUB_ADMIN_SERVICE_PORT", 8766)
    # read again by the blocks below: every number is checked here, before anything starts
    for port_setting, port_default in (
        ("GPUHUB_TUTORIAL_SYNC_PORT", 8765), ("GPUHUB_EXPORTER_PORT", 8768), ("GPUHUB_CULLER_PORT", 8767)
    ):
        hubconfig.env_port(port_setting, port_default)
    hubconfig.env_number("GPUHUB_TUTORIALS_POLL_INTERVAL", 60, minimum=1, maximum=24 * 3600)
except hubconfig.ConfigError as e:
    hubconfig.fail(str(e))

# ---- the Docker engine: its unix socket, or a TCP address with mutual TLS only ------------
# Checked before anything talks to the engine (the user network, the bridge address below).
swarm_mode = os.environ.get("GPUHUB_SPAWNER", "docker") == "swarm"
docker_host = os.environ.get("GPUHUB_DOCKER_HOST", "") if swarm_mode else ""
try:
    docker_tls = dockerhost.require_mutual_tls(
        docker_host or os.environ.get("DOCKER_HOST", ""), os.environ,
        "GPUHUB_DOCKER_HOST" if docker_host else "DOCKER_HOST",
    )
except dockerhost.DockerHostError as e:
    hubconfig.fail(str(e))
docker_client_kwargs = {"base_url": docker_host} if docker_host else {}
if docker_tls is not None:
    # verified against DOCKER_CERT_PATH's CA only (a REQUESTS_CA_BUNDLE cannot replace it)
    docker_client_kwargs["tls"] = docker_tls.client_tls()
if docker_client_kwargs:
    c.GPUDockerSpawner.client_kwargs = docker_client_kwargs

# ---- hub, proxy, database -------------------------------------------------------------
c.JupyterHub.bind_url = os.environ.get("GPUHUB_BIND_URL", "http://127.0.0.1:8000")
# User servers are untrusted (README, "Limits and networking"). On one host they run on their
# own Docker network, created here, where they cannot connect to each other; the hub API listens
# on its gateway, and the firewall (installed at the end of this file) lets them reach nothing
# else on this host.
user_network = None
if os.environ.get("GPUHUB_SPAWNER", "docker") != "swarm":
    from gpuhub_spawner.core import isolation
    from gpuhub_spawner.hub import isolation_host

    try:
        user_network = isolation_host.ensure_user_network(
            os.environ.get("GPUHUB_USER_NETWORK") or isolation.USER_NETWORK
        )
    except isolation_host.IsolationError as e:
        hubconfig.fail(str(e))
    c.GPUDockerSpawner.network_name = user_network.name
c.JupyterHub.hub_ip = os.environ.get("GPUHUB_HUB_IP") or (
    user_network.gateway if user_network else hubconfig.docker_bridge_gateway()
)
c.JupyterHub.hub_port = hub_port
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = os.environ.get("GPUHUB_DB_URL", f"sqlite:///{data_dir / 'jupyterhub.sqlite'}")
c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = False  # servers (and their GPUs) survive a hub restart

# ---- spawner --------------------------------------------------------------------------
c.JupyterHub.spawner_class = "gpu-docker"
c.GPUDockerSpawner.image = os.environ.get("GPUHUB_IMAGE", "gpuhub/singleuser:latest")
c.GPUDockerSpawner.pull_policy = "ifnotpresent"
c.GPUDockerSpawner.gpu_discovery = os.environ.get("GPUHUB_GPU_DISCOVERY", "auto")
c.GPUDockerSpawner.gpu_inventory = gpu_inventory
c.GPUDockerSpawner.gpu_replicas_per_gpu = replicas
c.GPUDockerSpawner.gpu_profiles = profiles
c.GPUDockerSpawner.gpu_queue_max_wait = queue_wait
c.GPUDockerSpawner.tutorials_source = os.environ.get("GPUHUB_TUTORIALS", "gpuhub-tutorials")
c.GPUDockerSpawner.usage_db_url = os.environ.get(
    "GPUHUB_USAGE_DB_URL", f"sqlite:///{data_dir / 'gpuhub-usage.sqlite'}"
)
c.GPUDockerSpawner.quota_defaults = quota_defaults

# ---- swarm: GPUHUB_SPAWNER=swarm, the hub on a manager (the engine's unix socket) ----------
# Servers become swarm services; GPUs are whatever the nodes advertise (`gpuhub node setup`),
# so GPUHUB_GPU_INVENTORY does not apply.  The hub reaches servers on their node's address
# (ports published in host mode); set GPUHUB_HUB_IP to an address the nodes can reach.
# A hub off the manager: GPUHUB_DOCKER_HOST=tcp://<manager>:2376 with mutual TLS only
# (DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH=<ca.pem, cert.pem, key.pem>: deploy/swarm/make-tls.sh).
# A Docker API over TCP without TLS client verification (either mode) stops the hub at start:
# every user's server could reach it and be root on every node.
if swarm_mode:
    c.JupyterHub.spawner_class = "gpu-swarm"

# ---- the "GPU Hub" admin service: hub admins only, a page and a JSON API ---------------
c.JupyterHub.services.append(
    {
        "name": "gpuhub-admin",
        "display": True,  # in the Services menu
        "oauth_no_confirm": True,  # the hub's own admin-only service: no consent page
        # what the page may do as the signed-in admin, with the token the hub gives their
        # browser for it (never more than that admin may do): create roster users and undo
        # them, create groups and set members and quotas, stop servers
        "oauth_client_allowed_scopes": ["admin:users", "admin:groups", "delete:servers"],
        "url": f"http://127.0.0.1:{admin_service_port}",
        "command": [sys.executable, "-m", "hub_services.admin"],
        "environment": {
            "GPUHUB_USAGE_DB_URL": c.GPUDockerSpawner.usage_db_url,
            "GPUHUB_QUOTA_DEFAULTS": json.dumps(quota_defaults),
        },
    }
)
c.JupyterHub.load_roles.append(
    {
        "name": "gpuhub-admin",
        # its own token only reads users, groups and servers. Changes are made with the admin's
        # own token (above): creating users needs admin:users, which JupyterHub 6 has no
        # narrower scope for and which includes every user's auth state (GitHub tokens).
        "scopes": ["list:users", "read:users", "read:servers", "list:groups", "read:groups"],
        "services": ["gpuhub-admin"],
    }
)
c.GPUDockerSpawner.http_timeout = 120
c.Spawner.default_url = "/lab"

# ---- tutorial sync: publish a Git branch to the store that servers mount -------------
tutorials_repo = os.environ.get("GPUHUB_TUTORIALS_REPO")
if tutorials_repo:
    store = Path(os.environ.get("GPUHUB_TUTORIALS_STORE", data_dir / "tutorials"))
    sync_port = os.environ.get("GPUHUB_TUTORIAL_SYNC_PORT", "8765")
    try:  # a commit over these is not published (the status page says why)
        sync_max_total_mb = int(hubconfig.env_number("GPUHUB_TUTORIALS_MAX_TOTAL_MB", 10240, minimum=1))
        sync_max_files = int(hubconfig.env_number("GPUHUB_TUTORIALS_MAX_FILES", 100000, minimum=1))
    except hubconfig.ConfigError as e:
        hubconfig.fail(str(e))
    c.JupyterHub.services.append(
        {
            "name": "tutorial-sync",
            "display": False,
            "oauth_no_confirm": True,  # the hub's own service: its status page asks no consent
            "url": f"http://127.0.0.1:{sync_port}",
            "command": [
                sys.executable, "-m", "hub_services.tutorial_sync",
                "--repo", tutorials_repo,
                "--branch", os.environ.get("GPUHUB_TUTORIALS_BRANCH", "main"),
                "--store", str(store),
                "--poll-interval", os.environ.get("GPUHUB_TUTORIALS_POLL_INTERVAL", "60"),
                "--max-total-mb", str(sync_max_total_mb),
                "--max-files", str(sync_max_files),
            ],
            # secrets travel in the environment, never on the command line
            "environment": {
                k: os.environ[k] for k in ("GPUHUB_TUTORIALS_TOKEN", "GPUHUB_WEBHOOK_SECRET") if os.environ.get(k)
            },
        }
    )
    # it needs no hub API access at all: no role, so its token holds no scopes. Its status page
    # is for admins and whoever holds access:services!service=tutorial-sync (e.g. a role for a
    # "tutorial-authors" group); its metrics for a read:metrics token; the webhook is signed.
    if os.environ.get("GPUHUB_EXPORTER_PORT"):
        # the exporter reads status.json for its gpuhub_tutorial_sync_status_* series
        c.JupyterHub.load_roles.append(
            {
                "name": "gpuhub-exporter-reads-tutorial-sync",
                "scopes": ["access:services!service=tutorial-sync"],
                "services": ["gpuhub-exporter"],
            }
        )
    if not os.environ.get("GPUHUB_TUTORIALS"):
        c.GPUDockerSpawner.tutorials_source = str(store)

# ---- sign-in --------------------------------------------------------------------------
admins = {u.strip() for u in os.environ.get("GPUHUB_ADMIN_USERS", "").split(",") if u.strip()}
c.Authenticator.admin_users = admins
if os.environ.get("GITHUB_CLIENT_ID"):
    # GitHub sign-in: orgs and org:team allowlists, a roster (users an admin put in the
    # "roster" group, or added in the admin panel), GitHub teams mirrored as groups named
    # org:team, admin teams
    c.JupyterHub.authenticator_class = "gpuhub-github"
    c.Authenticator.allow_all = False
    from gpuhub_spawner.hub.auth import admin_teams_problem

    # admin teams by GitHub team id (org:team-slug=id): a name can be taken over, an id cannot
    admin_teams = {t.strip() for t in os.environ.get("GPUHUB_GITHUB_ADMIN_TEAMS", "").split(",") if t.strip()}
    if admin_teams_problem(admin_teams):
        hubconfig.fail(f"GPUHUB_GITHUB_ADMIN_TEAMS: {admin_teams_problem(admin_teams)}")
    c.GPUHubGitHubAuthenticator.admin_teams = admin_teams
    if os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        # auth state lets the hub re-check membership on refresh, so removed attendees lose access
        c.GPUHubGitHubAuthenticator.enable_auth_state = True
        c.Authenticator.auth_refresh_age = 900
    c.GitHubOAuthenticator.oauth_callback_url = os.environ.get(
        "GPUHUB_OAUTH_CALLBACK_URL", c.JupyterHub.bind_url.rstrip("/") + "/hub/oauth_callback"
    )
    orgs = {o.strip() for o in os.environ.get("GPUHUB_GITHUB_ORGS", "").split(",") if o.strip()}
    users = {u.strip() for u in os.environ.get("GPUHUB_ALLOWED_USERS", "").split(",") if u.strip()}
    c.GitHubOAuthenticator.allowed_organizations = orgs
    c.GitHubOAuthenticator.allowed_users = users
else:
    # Each person their own password (NativeAuthenticator): attendees sign up at /hub/signup
    # and an admin approves them at /hub/authorize. Each GPUHUB_ADMIN_USERS name gets a
    # generated password at first start, kept (mode 0600) in <data>/admin-credentials/<name>;
    # the log says where, never the password. Nobody can sign up under an admin's name.
    credentials = data_dir / "admin-credentials"
    try:
        for name in admins:
            hubconfig.admin_credential_path(credentials, name)
    except hubconfig.ConfigError as e:
        hubconfig.fail(str(e))
    c.JupyterHub.authenticator_class = "gpuhub_spawner.hub.auth.GPUHubNativeAuthenticator"
    c.GPUHubNativeAuthenticator.admin_credentials_dir = str(credentials)
    for old in ("shared-password", "admin-password"):
        if (data_dir / old).exists():
            print(f"gpuhub: {data_dir / old} is no longer used (everyone has their own password now); "
                  "delete it", flush=True)
    if not admins:
        print("gpuhub: no GPUHUB_ADMIN_USERS, so nobody can approve sign-ups: set it, e.g. "
              "GPUHUB_ADMIN_USERS=prof (or set GITHUB_CLIENT_ID to use GitHub)", flush=True)

# ---- site-specific additions, then a check of the result ------------------------------
extra = os.environ.get("GPUHUB_EXTRA_CONFIG")
if extra:
    load_subconfig(extra)  # noqa: F821 - provided by JupyterHub

def _listed(value: object) -> list:
    """A list setting as set so far: a list, or traitlets' lazy value after .append()."""
    return value if isinstance(value, list) else value.get_value([]) if hasattr(value, "get_value") else []


# the admin service's pages look for templates where the hub does (after the extra config, so
# an operator's c.JupyterHub.template_paths there counts); the spawn form reads the hub's own
template_paths = _listed(c.JupyterHub.get("template_paths"))
if template_paths:
    for service in _listed(c.JupyterHub.services):
        if service["name"] == "gpuhub-admin":
            service["environment"]["GPUHUB_TEMPLATE_PATHS"] = os.pathsep.join(map(str, template_paths))

# ---- metrics: hub exporter service + Prometheus's token (after the extra config, so the ----
# ---- exporter sees the final spawner settings; see deploy/prometheus/) --------------------
# GPUHUB_EXPORTER_PORT          runs the hub exporter service on that port (off when unset)
# GPUHUB_PROMETHEUS_TOKEN_FILE  a file holding the token Prometheus scrapes with: registers a
#                               "prometheus" service whose role holds only read:metrics (for
#                               /hub/metrics and the exporter's /services/gpuhub-exporter/metrics)
exporter_port = os.environ.get("GPUHUB_EXPORTER_PORT")
if exporter_port:
    spawner_cfg = c.GPUDockerSpawner
    exporter_env = {
        "GPUHUB_USAGE_DB_URL": spawner_cfg.get("usage_db_url", ""),
        "GPUHUB_QUOTA_DEFAULTS": json.dumps(spawner_cfg.get("quota_defaults", {})),
        "GPUHUB_GPU_INVENTORY": json.dumps(spawner_cfg.get("gpu_inventory", [])),
        "GPUHUB_GPU_DISCOVERY": spawner_cfg.get("gpu_discovery", "auto"),
        "GPUHUB_REPLICAS_PER_GPU": str(spawner_cfg.get("gpu_replicas_per_gpu", 1)),
        "GPUHUB_PROFILES": json.dumps(spawner_cfg.get("gpu_profiles", [])),
    }
    if tutorials_repo:
        exporter_env["GPUHUB_TUTORIAL_SYNC_STATUS_URL"] = (
            f"http://127.0.0.1:{sync_port}/services/tutorial-sync/status.json"
        )
    if swarm_mode:
        # pool capacity from the swarm's nodes and tasks, read from the manager as the hub does
        swarm_cfg = c.GPUSwarmSpawner
        exporter_env["GPUHUB_SPAWNER"] = "swarm"
        exporter_env["GPUHUB_HUB_ID"] = swarm_cfg.get("gpu_hub_id") or spawner_cfg.get("gpu_hub_id", "gpuhub")
        client_kwargs = swarm_cfg.get("client_kwargs") or spawner_cfg.get("client_kwargs") or {}
        if client_kwargs.get("base_url"):
            exporter_env["GPUHUB_DOCKER_HOST"] = client_kwargs["base_url"]
        # services get a clean environment: pass the Docker client's own settings on
        for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            if os.environ.get(key):
                exporter_env[key] = os.environ[key]
    c.JupyterHub.services.append(
        {
            "name": "gpuhub-exporter",
            "display": False,
            "url": f"http://127.0.0.1:{exporter_port}",
            "command": [sys.executable, "-m", "hub_services.exporter"],
            "environment": exporter_env,
        }
    )
    c.JupyterHub.load_roles.append(
        {
            "name": "gpuhub-exporter",
            # read-only: users with a server, their groups and servers, group quotas
            "scopes": ["list:users", "read:users:groups", "read:servers", "list:groups", "read:groups"],
            "services": ["gpuhub-exporter"],
        }
    )
prometheus_token_file = os.environ.get("GPUHUB_PROMETHEUS_TOKEN_FILE")
if prometheus_token_file:
    try:
        prometheus_token = hubconfig.read_token_file("GPUHUB_PROMETHEUS_TOKEN_FILE", prometheus_token_file)
    except hubconfig.ConfigError as e:
        hubconfig.fail(str(e))
    c.JupyterHub.services.append({"name": "prometheus", "api_token": prometheus_token})
    c.JupyterHub.load_roles.append(
        {"name": "gpuhub-prometheus", "scopes": ["read:metrics"], "services": ["prometheus"]}
    )
# ---- end of metrics ------------------------------------------------------------------------

# ---- GPU-aware idle culler (hub_services/culler; after the extra config, so it sees the ----
# ---- final spawner settings) ---------------------------------------------------------------
# GPUHUB_CULLER           "off" runs no culler (on by default)
# GPUHUB_CULLER_PORT      port of the culler service (8767)
# GPUHUB_CULLER_CONFIG    its config file (JSON or traitlets .py): timeouts, warning, agents…
# GPUHUB_GPU_AGENT_URLS   node agents serving /api/activity, comma-separated (GPU work signal)
# It stops idle servers (hub, kernel and GPU signals must all agree), servers past the quota's
# max_session_hours and GPU servers out of GPU-hours, after a warning shown in the hub's pages
# (the `announcement` template variable, per user) and as ~/CULL-WARNING.txt in the server.
# It uses the local Docker engine (as the hub does) for container labels, the notice file and
# kernel probes (run inside the container with the server's own token; on a swarm, servers on
# other nodes are not probed and so not culled for idleness unless idle_without_probe is set).
# Its metrics (/services/gpuhub-culler/metrics) need a read:metrics token (the prometheus service).
if os.environ.get("GPUHUB_CULLER", "on").strip().lower() not in ("off", "0", "false", "no"):
    culler_spawner = c.GPUDockerSpawner
    culler_db = culler_spawner.get("usage_db_url", "")
    culler_command = [sys.executable, "-m", "hub_services.culler"]
    if os.environ.get("GPUHUB_CULLER_CONFIG"):
        culler_command += ["--config", os.environ["GPUHUB_CULLER_CONFIG"]]
    c.JupyterHub.services.append(
        {
            "name": "gpuhub-culler",
            "display": False,
            "url": "http://127.0.0.1:{}".format(os.environ.get("GPUHUB_CULLER_PORT", "8767")),
            "command": culler_command,
            "environment": {
                "GPUHUB_USAGE_DB_URL": culler_db,
                "GPUHUB_QUOTA_DEFAULTS": json.dumps(culler_spawner.get("quota_defaults", {})),
                "GPUHUB_HUB_ID": culler_spawner.get("gpu_hub_id", "gpuhub"),
                "GPUHUB_GPU_AGENT_URLS": os.environ.get("GPUHUB_GPU_AGENT_URLS", ""),
                # the agents' bearer token (a file path, never the token itself)
                "GPUHUB_GPU_AGENT_TOKEN_FILE": os.environ.get("GPUHUB_GPU_AGENT_TOKEN_FILE", ""),
            },
        }
    )
    c.JupyterHub.load_roles.append(
        {
            "name": "gpuhub-culler",
            # users with servers, their activity and groups; group quotas; stop servers. No
            # access:servers: its token never goes to a user's server (kernels are asked from
            # inside the container with the server's own token). It cannot create, change or
            # delete users or groups.
            "scopes": [
                "list:users", "read:users:activity", "read:users:groups", "read:servers",
                "read:groups", "delete:servers",
            ],
            "services": ["gpuhub-culler"],
        }
    )
# ---- end of culler -------------------------------------------------------------------------

# ---- what each user is told on the hub's pages: their cull warnings (time left) and notices ----
# ---- such as "your server stopped while the hub was restarting" (rows in the usage database) ---
notices_db = c.GPUDockerSpawner.get("usage_db_url", "")
if notices_db:
    from gpuhub_spawner.hub.announce import hub_announcement

    page_vars = dict(c.JupyterHub.get("template_vars", {}))
    page_vars["announcement"] = hub_announcement(notices_db, fallback=page_vars.get("announcement", ""))
    c.JupyterHub.template_vars = page_vars

# ---- host firewall for the user network (after the extra config: the final hub address) ----
# The hub refuses to start without it (fail closed) unless GPUHUB_USER_FIREWALL=off.
if user_network is not None:
    if os.environ.get("GPUHUB_USER_FIREWALL", "on").strip().lower() in ("off", "0", "false", "no"):
        print("gpuhub: GPUHUB_USER_FIREWALL=off: nothing stops user servers from reaching services "
              "on this host; install equivalent rules yourself (README)", file=sys.stderr, flush=True)
    else:
        try:
            isolation_host.install_firewall(user_network, c.JupyterHub.hub_ip, c.JupyterHub.hub_port)
        except isolation_host.IsolationError as e:
            hubconfig.fail(str(e))

try:
    hubconfig.check_spawner_config(c.GPUDockerSpawner, require_pools=not swarm_mode)
except hubconfig.ConfigError as e:
    hubconfig.fail(str(e))
if swarm_mode:
    # one set of settings for both spawners (the swarm spawner reads its own section);
    # anything set on c.GPUSwarmSpawner itself wins
    from traitlets.config import Config

    swarm_settings = Config(c.GPUDockerSpawner)
    swarm_settings.merge(c.GPUSwarmSpawner)
    c.GPUSwarmSpawner = swarm_settings
    # each node needs the image (a registry, or `gpuhub node prepull`); the manager does not
    c.GPUSwarmSpawner.pull_policy = "skip"
