# gpuhub's JupyterHub configuration: wiring from gpuhub.yaml to the hub, spawner, sign-in and services.
#
# The settings are in one file, gpuhub.yaml, named by GPUHUB_CONFIG (`gpuhub config example`
# prints a commented one; `gpuhub config check FILE` checks one; deploy/gpuhub.example.yaml).
# Without it this runs the embedded default: one host, plain Docker, sqlite, the local
# `gpuhub/singleuser` image, the hub on http://127.0.0.1:8000, and sign-in with each person's
# own password (sign up, an admin approves; admins get a generated one in the data directory).
# GPUs come from NVML when the host has it, else from inventory.gpus; with neither, users get
# CPU-only servers. A bad file stops the hub here with one line per problem, naming its key.
#
# The GPUHUB_* environment variables of earlier releases still work for this release, laid
# over the file, each with a notice naming its key (gpuhub_spawner/core/hubconfig.py lists
# them). Secrets stay in the environment or in files the config names: GITHUB_CLIENT_SECRET,
# JUPYTERHUB_CRYPT_KEY, GPUHUB_TUTORIALS_TOKEN, GPUHUB_WEBHOOK_SECRET, the *_file keys.
import os
import sys
from pathlib import Path

from gpuhub_spawner.core import dockerhost, hubconfig
from gpuhub_spawner.core.config import ConfigFileError, file_settings, load_config
from gpuhub_spawner.hub import managed_services
from gpuhub_spawner.storage import dbping, dbwait

c = get_config()  # noqa: F821 - provided by JupyterHub

here = Path(__file__).resolve().parent
try:
    cfg = load_config()
except ConfigFileError as e:
    hubconfig.fail(*e.lines)
except hubconfig.ConfigError as e:
    hubconfig.fail(str(e))
data_dir = Path(cfg.hub.data_dir or here / "data").resolve()
data_dir.mkdir(parents=True, exist_ok=True)
# services read the same file themselves; the hub passes them only what the file does not say
# (gpuhub_spawner/hub/managed_services.py says what travels how)
service_env = managed_services.file_wiring(os.environ)
try:
    from_file = file_settings(os.environ)  # what each service reads in it
except ConfigFileError as e:
    hubconfig.fail(*e.lines)

# ---- the Docker engine: its unix socket, or a TCP address with mutual TLS only ------------
# Checked before anything talks to the engine (the user network, the bridge address below).
swarm_mode = cfg.hub.spawner == "swarm"
docker_host = cfg.hub.docker_host if swarm_mode else ""
try:
    docker_tls = dockerhost.require_mutual_tls(
        docker_host or os.environ.get("DOCKER_HOST", ""), os.environ,
        hubconfig.setting_name("hub.docker_host") if docker_host else "DOCKER_HOST",
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
c.JupyterHub.bind_url = cfg.hub.bind_url
# User servers are untrusted (README, "Limits and networking"). On one host they run on their
# own Docker network, created here, where they cannot connect to each other; the hub API listens
# on its gateway, and the firewall (installed at the end of this file) lets them reach nothing
# else on this host.
user_network = None
if not swarm_mode:
    from gpuhub_spawner.hub import isolation_host

    try:
        user_network = isolation_host.ensure_user_network(cfg.hub.user_network)
    except isolation_host.IsolationError as e:
        hubconfig.fail(str(e))
    c.GPUDockerSpawner.network_name = user_network.name
c.JupyterHub.hub_ip = cfg.hub.ip or (user_network.gateway if user_network else hubconfig.docker_bridge_gateway())
c.JupyterHub.hub_port = cfg.hub.port
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{cfg.hub.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = cfg.hub.db_url or f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
try:  # a PostgreSQL server starting beside the hub (the stack): wait for it, rather than exit
    dbwait.wait_for_database(c.JupyterHub.db_url, say=lambda line: print(line, file=sys.stderr, flush=True))
except dbwait.DatabaseUnavailable as e:
    hubconfig.fail(str(e))
# the hub's session checks a pooled connection when it sat idle, not before every transaction
# (three round trips each on PostgreSQL, on the hub's event loop): gpuhub_spawner/storage/dbping.py
dbping.use_for_jupyterhub()
c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = False  # servers (and their GPUs) survive a hub restart

# ---- spawner --------------------------------------------------------------------------
c.JupyterHub.spawner_class = "gpu-docker"
c.GPUDockerSpawner.image = cfg.images.default
c.GPUDockerSpawner.pull_policy = "ifnotpresent"
c.GPUDockerSpawner.gpu_discovery = cfg.inventory.discovery
c.GPUDockerSpawner.gpu_inventory = cfg.inventory.gpus
c.GPUDockerSpawner.gpu_replicas_per_gpu = cfg.inventory.replicas_per_gpu
c.GPUDockerSpawner.gpu_profiles = [p.spawner_entry() for p in cfg.profiles]
c.GPUDockerSpawner.gpu_queue_max_wait = cfg.inventory.queue_max_wait
c.GPUDockerSpawner.gpu_fair_share_half_life = cfg.inventory.fair_share_half_life
c.GPUDockerSpawner.gpu_reservation_grace = cfg.inventory.reservation_grace_minutes
c.GPUDockerSpawner.gpu_shared_limit = cfg.inventory.shared_limit
c.GPUDockerSpawner.tutorials_source = cfg.tutorials.source or "gpuhub-tutorials"
c.GPUDockerSpawner.usage_db_url = cfg.hub.usage_db_url or f"sqlite:///{data_dir / 'gpuhub-usage.sqlite'}"
c.GPUDockerSpawner.quota_defaults = cfg.quota_defaults
c.GPUDockerSpawner.default_mem_limit = str(cfg.limits.default_mem_limit)
c.GPUDockerSpawner.default_cpu_limit = cfg.limits.default_cpu_limit
c.GPUDockerSpawner.pids_limit = cfg.limits.pids_limit
# a profile's own image (from images.allowed) wins over a user's pick from
# c.DockerSpawner.allowed_images, which works as upstream documents it (see hub/profile_image.py)
c.GPUDockerSpawner.gpu_profile_images = {p.slug: p.image for p in cfg.profiles if p.image}
if any(p.environment for p in cfg.profiles):
    # a profile's own environment, set on the spawner as its profile is chosen
    from gpuhub_spawner.hub.profile_image import profile_environment_hook

    c.Spawner.pre_spawn_hook = profile_environment_hook({p.slug: p.environment for p in cfg.profiles})

# ---- swarm: hub.spawner: swarm, the hub on a manager (the engine's unix socket) ------------
# Servers become swarm services; GPUs are whatever the nodes advertise (`gpuhub node setup`),
# so inventory.gpus does not apply.  The hub reaches servers on their node's address
# (ports published in host mode); set hub.ip to an address the nodes can reach.
# A hub off the manager: hub.docker_host: tcp://<manager>:2376 with mutual TLS only
# (DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH=<ca.pem, cert.pem, key.pem>: deploy/swarm/make-tls.sh).
# A Docker API over TCP without TLS client verification (either mode) stops the hub at start:
# every user's server could reach it and be root on every node.
if swarm_mode:
    c.JupyterHub.spawner_class = "gpu-swarm"

# ---- in the stack of `gpuhub deploy` (deploy/stack; GPUHUB_STACK names it): public https URL
# ---- and Secure cookies behind Caddy, the proxy on the internal network only, the hub API
# ---- and user servers on the user network (gpuhub_spawner/deploy/inhub.py says why)
if os.environ.get("GPUHUB_STACK") and cfg.deploy is not None:
    from gpuhub_spawner.deploy import inhub

    inhub.apply(c, os.environ["GPUHUB_STACK"], cfg.deploy.public_url)
    if os.environ.get("PGPASSWORD"):
        # the services open the same PostgreSQL database (libpq reads it; never in a URL)
        service_env["PGPASSWORD"] = os.environ["PGPASSWORD"]

# ---- the "GPU Hub" admin service: hub admins only, a page and a JSON API ---------------
admin_service, admin_role = managed_services.admin(cfg.services.admin_port, c.GPUDockerSpawner, from_file, service_env)
if cfg.metrics.prometheus_url:  # the charts' units held and people waiting come from it
    admin_service["command"].append(f"--prometheus-url={cfg.metrics.prometheus_url}")
c.JupyterHub.services.append(admin_service)
c.JupyterHub.load_roles.append(admin_role)
# instructors open attendees' servers from its Help tab (JupyterHub sharing; off with group "")
c.JupyterHub.load_roles.extend(managed_services.instructor_help(admin_service, cfg.instructors))
c.GPUDockerSpawner.http_timeout = 120
c.Spawner.default_url = "/lab"
# a server re-asks the hub who may use it every 30 s (JupyterHub's default: 5 min), so an ended
# instructor help, a blocked user or a revoked token stops working within 30 s
c.Spawner.args = ["--HubOAuth.cache_max_age=30"]


def _token_file(key: str, path: str) -> str:
    """A service token from the file gpuhub.yaml's ``key`` names; a bad file stops the hub (exit 2)."""
    try:
        return hubconfig.read_token_file(hubconfig.setting_name(key), path)
    except hubconfig.ConfigError as e:
        hubconfig.fail(str(e))


# ---- tutorial sync: publish a Git branch to the store that servers mount -------------

if cfg.tutorials.repo:
    store = Path(cfg.tutorials.store or data_dir / "tutorials")
    # secrets travel in the environment, never on the command line
    secrets = {k: os.environ[k] for k in ("GPUHUB_TUTORIALS_TOKEN", "GPUHUB_WEBHOOK_SECRET") if os.environ.get(k)}
    c.JupyterHub.services.append(managed_services.tutorial_sync(cfg, store, {**secrets, **service_env}, from_file))
    if cfg.metrics.exporter_port:
        c.JupyterHub.load_roles.append(managed_services.exporter_reads_tutorial_sync())
    if not cfg.tutorials.source:
        c.GPUDockerSpawner.tutorials_source = str(store)
    if cfg.tutorials.mirror_token_file:
        # the per-node mirrors (no NFS on a swarm): a token that may read the bundle, nothing else
        mirror_token = _token_file("tutorials.mirror_token_file", cfg.tutorials.mirror_token_file)
        mirror_service, mirror_role, mirror_scope = managed_services.tutorial_mirror(mirror_token)
        c.JupyterHub.services.append(mirror_service)
        c.JupyterHub.load_roles.append(mirror_role)
        c.JupyterHub.custom_scopes = {**(c.JupyterHub.get("custom_scopes") or {}), **mirror_scope}

# ---- sign-in --------------------------------------------------------------------------
admins = set(cfg.sign_in.admin_users)
c.Authenticator.admin_users = admins
c.Authenticator.blocked_users = set(cfg.sign_in.blocked_users)
github = cfg.sign_in.github
if cfg.sign_in.authenticator == "github":
    # GitHub sign-in: orgs and org:team allowlists, a roster (users an admin put in the
    # "roster" group, or added in the admin panel), GitHub teams mirrored as groups named
    # org:team, admin teams
    c.JupyterHub.authenticator_class = "gpuhub-github"
    c.Authenticator.allow_all = False
    from gpuhub_spawner.hub.auth import admin_teams_problem

    # admin teams by GitHub team id (org:team-slug=id): a name can be taken over, an id cannot
    admin_teams = set(github.admin_teams)
    if admin_teams_problem(admin_teams):
        hubconfig.fail(f"{hubconfig.setting_name('sign_in.github.admin_teams')}: {admin_teams_problem(admin_teams)}")
    c.GPUHubGitHubAuthenticator.admin_teams = admin_teams
    c.GitHubOAuthenticator.client_id = github.client_id
    if github.client_secret_file:
        try:
            c.GitHubOAuthenticator.client_secret = hubconfig.read_token_file(
                "sign_in.github.client_secret_file", github.client_secret_file, min_length=8
            )
        except hubconfig.ConfigError as e:
            hubconfig.fail(str(e))
    if os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        # auth state lets the hub re-check membership on refresh, so removed attendees lose access
        c.GPUHubGitHubAuthenticator.enable_auth_state = True
        c.Authenticator.auth_refresh_age = 900
    c.GitHubOAuthenticator.oauth_callback_url = (
        github.callback_url or c.JupyterHub.bind_url.rstrip("/") + "/hub/oauth_callback"
    )
    c.GitHubOAuthenticator.allowed_organizations = set(github.orgs)
    c.GitHubOAuthenticator.allowed_users = set(github.allowed_users)
    if github.url:  # GitHub Enterprise Server (its API under /api/v3)
        c.GitHubOAuthenticator.github_url = github.url
    if github.ca_certificates:
        # a private CA: the hub verifies GitHub's certificate against it (never skips the check)
        (data_dir / "github-ca.pem").write_text(github.ca_certificates)
        c.GitHubOAuthenticator.http_request_kwargs = {"ca_certs": str(data_dir / "github-ca.pem")}
else:
    # Each person their own password (NativeAuthenticator): attendees sign up at /hub/signup
    # and an admin approves them at /hub/authorize. Each sign_in.admin_users name gets a
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
        print("gpuhub: no admin users, so nobody can approve sign-ups: set sign_in.admin_users in "
              "gpuhub.yaml, e.g. [prof] (or sign_in.authenticator: github to use GitHub)", flush=True)

# ---- site-specific additions, then a check of the result ------------------------------
extra = cfg.hub.extra_config
if extra:
    load_subconfig(extra)  # noqa: F821 - provided by JupyterHub

# several servers per person: each server's own token may also read its user's servers (its
# JupyterLab says "your turn" when another one, waiting in line, is ready: images/singleuser/
# gpuhub_labnotices.py); nothing more, and only where named servers are on
if cfg.hub.named_servers:
    c.JupyterHub.allow_named_servers = True
if c.JupyterHub.get("allow_named_servers") and "server_token_scopes" not in c.Spawner:
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "read:servers!user"]


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
# metrics.exporter_port          runs the hub exporter service on that port (off when null)
# metrics.prometheus_token_file  a file holding the token Prometheus scrapes with: registers a
#                                "prometheus" service whose role holds only read:metrics (for
#                                /hub/metrics and the exporter's /services/gpuhub-exporter/metrics)
if cfg.metrics.exporter_port:
    exporter_env = dict(service_env)
    if cfg.tutorials.repo:
        exporter_env["GPUHUB_TUTORIAL_SYNC_STATUS_URL"] = managed_services.tutorial_sync_status_url(cfg.tutorials)
    if swarm_mode:
        exporter_env.update(
            managed_services.swarm_environment(c.GPUDockerSpawner, c.GPUSwarmSpawner, os.environ, from_file)
        )
    exporter_service, exporter_role = managed_services.exporter(
        cfg.metrics.exporter_port, c.GPUDockerSpawner, from_file, exporter_env
    )
    c.JupyterHub.services.append(exporter_service)
    c.JupyterHub.load_roles.append(exporter_role)
if cfg.metrics.prometheus_token_file:
    prometheus_token = _token_file("metrics.prometheus_token_file", cfg.metrics.prometheus_token_file)
    prometheus_service, prometheus_role = managed_services.prometheus(prometheus_token)
    c.JupyterHub.services.append(prometheus_service)
    c.JupyterHub.load_roles.append(prometheus_role)
# ---- end of metrics ------------------------------------------------------------------------

# ---- GPU-aware idle culler (hub_services/culler; after the extra config, so it sees the ----
# ---- final spawner settings) ---------------------------------------------------------------
# culler.enabled         false runs no culler (on by default); culler.port: its port (8767)
# culler.config_file     its config file (JSON or traitlets .py): timeouts, warning, agents…;
#                        culler.every, idle_cpu_timeout, idle_gpu_timeout, warn_seconds win over it
# culler.gpu_agent_urls  node agents serving /api/activity (GPU work signal); on a swarm, empty
#                        finds them on the nodes labelled gpuhub.gpu=true
# It stops idle servers (hub, kernel and GPU signals must all agree), servers past the quota's
# max_session_hours and GPU servers out of GPU-hours, after a warning shown in the hub's pages
# (the `announcement` template variable, per user) and as ~/CULL-WARNING.txt in the server.
# It uses the local Docker engine (as the hub does) for container labels, the notice file and
# kernel probes (run inside the container with the server's own token; on a swarm, servers on
# other nodes get them through their node's agent, with culler.gpu_agent_token_file).
# Its metrics (/services/gpuhub-culler/metrics) need a read:metrics token (the prometheus service).
if cfg.culler.enabled:
    culler_env = dict(service_env)
    if swarm_mode:  # the manager's engine, as the hub reaches it: where the servers' tasks are
        culler_env.update(
            managed_services.swarm_environment(c.GPUDockerSpawner, c.GPUSwarmSpawner, os.environ, from_file)
        )
    culler_service, culler_role = managed_services.culler(cfg.culler, c.GPUDockerSpawner, from_file, culler_env)
    c.JupyterHub.services.append(culler_service)
    c.JupyterHub.load_roles.append(culler_role)
    # what the lines want back (hub/lines.py): the culler reclaims over-share and lent units
    from gpuhub_spawner.hub import lines as gpu_lines

    c.JupyterHub.extra_handlers = [*(c.JupyterHub.get("extra_handlers") or []),
                                   (r"/api/gpuhub/lines", gpu_lines.handler())]
    c.JupyterHub.custom_scopes = {**(c.JupyterHub.get("custom_scopes") or {}), **gpu_lines.SCOPE_SPEC}
# ---- end of culler -------------------------------------------------------------------------

# ---- what each user is told on the hub's pages: their cull warnings (time left) and notices ----
# ---- such as "your server stopped while the hub was restarting" (rows in the usage database) ---
notices_db = c.GPUDockerSpawner.get("usage_db_url", "")
if notices_db:
    # opened (so migrated) once at start: a database migrated by a NEWER gpuhub stops the hub
    # here in one line saying what to do, not at somebody's first spawn
    from gpuhub_spawner.storage.db import SchemaError, open_engine

    try:
        open_engine(notices_db).dispose()
    except SchemaError as e:
        print(f"gpuhub: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001 - not reachable now: opened again where it is used
        print(f"gpuhub: the usage database cannot be opened now ({e}); it is tried again when used", flush=True)
    from gpuhub_spawner.hub.announce import hub_announcement

    page_vars = dict(c.JupyterHub.get("template_vars", {}))
    page_vars["announcement"] = hub_announcement(notices_db, fallback=page_vars.get("announcement", ""))
    c.JupyterHub.template_vars = page_vars

# ---- host firewall for the user network (after the extra config: the final hub address) ----
# The hub refuses to start without it (fail closed) unless hub.user_firewall is false.
if user_network is not None:
    if not cfg.hub.user_firewall:
        off = "hub.user_firewall is false"
        if hubconfig.setting_name("hub.user_firewall") != "hub.user_firewall":
            off = "GPUHUB_USER_FIREWALL=off"
        print(f"gpuhub: {off}: nothing stops user servers from reaching services on this host; "
              "install equivalent rules yourself (README)", file=sys.stderr, flush=True)
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
    # users' volumes on NFS follow them to every node; else a user's next server goes to the node
    # holding them (core/home_node.py)
    if cfg.storage.nfs:
        c.GPUSwarmSpawner.gpu_storage_nfs = cfg.storage.nfs.model_dump()
