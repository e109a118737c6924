"""The commented example of ``gpuhub.yaml`` that ``gpuhub config example`` prints.

Kept equal to ``deploy/gpuhub.example.yaml`` (a test checks), and it passes ``gpuhub config check``.
"""

EXAMPLE = """\
# gpuhub.yaml: the one file that configures gpuhub (the hub and its services).
#
# The hub reads the file named by GPUHUB_CONFIG at start and refuses to start when it is wrong;
# check it first with `gpuhub config check gpuhub.yaml`. Every key is optional; the values here
# are an example for one host with one GPU, and the comments say what an empty or missing
# value means. Unknown keys are errors. `gpuhub config example` prints this file.
# Secrets never go in this file: it names files holding them, or they stay in the environment
# (GITHUB_CLIENT_SECRET, JUPYTERHUB_CRYPT_KEY, GPUHUB_TUTORIALS_TOKEN, GPUHUB_WEBHOOK_SECRET).
#
# Sizes (mem_limit, max_total_size) are JupyterHub's: a number of bytes, or a number followed
# by K, M, G or T (1024-based), such as 512M, 4G or 1.5T. "4Gi", "4GB" and "4g" are refused.

hub:
  bind_url: http://127.0.0.1:8000   # public URL the proxy listens on
  ip: ""                 # address of the hub API; empty: the user network's gateway
                         # (on a swarm: Docker's bridge gateway; set one the nodes can reach)
  port: 8081             # port of the hub API
  proxy_api_port: 8001   # port of the proxy's REST API
  data_dir: ""           # database, cookie secret, admin passwords; empty: ./data
  db_url: ""             # JupyterHub's database; empty: sqlite in data_dir
  usage_db_url: ""       # GPU usage ledger and quota overrides; empty: sqlite in data_dir
  spawner: docker        # docker (one host) or swarm (the hub on a swarm manager)
  docker_host: ""        # swarm only: tcp://manager:2376, mutual TLS only (DOCKER_TLS_VERIFY,
                         # DOCKER_CERT_PATH in the environment; deploy/swarm/make-tls.sh)
  user_network: gpuhub-users   # Docker network of user servers (no traffic between them)
  user_firewall: true    # false: you install the host firewall yourself (README)
  named_servers: false   # true: people may run several servers (e.g. a CPU one while a GPU
                         # one waits in line; quota max_named_servers caps them)
  extra_config: ""       # a Python config file loaded last, for anything else

sign_in:
  authenticator: native  # native: each person their own password; github: GitHub sign-in
  admin_users: [prof]    # with native sign-in each gets a generated password in data_dir
  blocked_users: []      # never let in, whatever their orgs or the roster say
  github:
    client_id: ""        # the OAuth app's client id (its secret: GITHUB_CLIENT_SECRET,
    client_secret_file: ""   # or a file named here)
    callback_url: ""     # empty: <bind_url>/hub/oauth_callback
    orgs: []             # orgs or org:team whose members may sign in
    allowed_users: []    # GitHub usernames allowed besides them
    admin_teams: []      # org:team-slug=id (by team id: a name can be taken over)
    url: ""              # GitHub Enterprise Server's https address; empty: github.com
    ca_certificates: ""  # PEM of a private CA signing that server's certificate; empty: the system's

images:
  default: gpuhub/singleuser:latest
  allowed: [gpuhub/singleuser:latest]   # images a profile may name (the default always may)

inventory:
  discovery: static      # auto (NVML when present, else gpus below), nvml or static
  gpus:                  # static GPUs: uuid, name, memory_mb; optional replicas, mig
    - {uuid: GPU-00000000-0000-4000-8000-000000000000, name: NVIDIA A100 40GB, memory_mb: 40960}
  replicas_per_gpu: 1    # time-slicing: servers per non-MIG GPU (1-64)
  queue_max_wait: 300    # seconds a spawn waits in line for a GPU (0: refuse at once)
  fair_share_half_life: 24  # hours: in line, less recent GPU use goes first, fading by half (0: off)
  reservation_grace_minutes: 10  # a group's reserved units stay kept this long into the window, then are lent
  shared_limit: hints    # time-sliced slots: hints (to frameworks) or mps (enforced: gpuhub node setup --mps)

profiles:                # the choices on the spawn page; empty: one per pool + CPU only
  - slug: gpu
    display_name: One A100
    pool: gpu            # a pool of the inventory (the GPU's kind); null: CPU only
    description: A whole GPU
    default: true
    mem_limit: 32G
    cpu_limit: 8
    environment: {TF_CPP_MIN_LOG_LEVEL: "2"}
  - slug: cpu
    display_name: CPU only
    pool: null
    mem_limit: 4G
    cpu_limit: 2
    image: gpuhub/singleuser:latest   # one of images.allowed; empty: images.default

limits:                  # a server whose profile and quota set no limit gets these
  default_mem_limit: 8G  # RAM (no swap beyond it); there is no "unlimited"
  default_cpu_limit: 2
  pids_limit: 2048       # processes and threads at once (stops fork bombs)

quota_defaults:          # every user's quota before their groups' (see README, "Quotas")
  max_gpu_units: 1
  gpu_hours_per_period: 20
  period: week
  mem_limit: 16G

culler:
  enabled: true          # stop idle servers and servers out of GPU-hours, after a warning
  port: 8767
  config_file: ""        # timeouts, warning, thresholds: JSON or traitlets .py
  gpu_agent_urls: []     # node agents serving /api/activity (the GPU work signal)
  gpu_agent_token_file: ""   # the agents' bearer token, in a file
  every: 60              # seconds between passes (0: none, only triggered ones); null: default
  idle_cpu_timeout: 3600 # seconds a CPU-only server may be idle (0: never culled for idleness)
  idle_gpu_timeout: 1200 # seconds a GPU server may be idle
  warn_seconds: 300      # the warning comes this long before a server is stopped
  budget_warn_seconds: 1800  # a GPU-hour budget running out is told this long before
  reclaim_idle_timeout: 600  # idle timeout of GPU servers over their group's share while
                         # members of a group with a guarantee or reservation wait for the pool
                         # (more than warn_seconds: the warning comes that long before)
  reclaim_after: 600     # a reservation's member waits this long for a lent unit, then one
                         # borrower is warned and stopped, busy or not

tutorials:
  source: ""             # volume name or absolute host path servers mount; empty: the synced
                         # store when repo is set, else the gpuhub-tutorials volume
  repo: ""               # Git URL: publishes branch into store (the tutorial-sync service)
  branch: main
  store: ""              # empty: <data_dir>/tutorials
  poll_interval: 60      # seconds between fetches (a signed webhook also triggers one)
  max_total_size: 10G    # a commit over this is not published
  max_files: 100000
  port: 8765
  mirror_token_file: ""  # swarm without NFS: the tutorial-mirror service's token file (the
                         # per-node mirrors fetch the published tutorials with it)

metrics:
  exporter_port: null    # a port runs the per-user metrics service; null: none
  prometheus_token_file: ""  # a file holding Prometheus's token (read:metrics only)
  prometheus_url: ""     # e.g. http://prometheus:9090: the GPU Hub page's charts of units held
                         # and people waiting come from it (empty: from the usage ledger)

services:
  admin_port: 8766       # the "GPU Hub" admin service

instructors:             # instructor help: the GPU Hub page's Help tab
  group: instructors     # its members open an attendee's running server (a JupyterHub share of it,
                         # logged, shown to the attendee); "" turns help off
  access: full           # full: the helper can do in the server what the attendee can

deploy:                  # the stack `gpuhub deploy` runs on a swarm manager (deploy/stack/README.md)
  public_url: https://workshop.example.org   # what attendees open (Caddy: HTTPS on 443)
  tls:
    mode: files          # files (your certificate), acme (public DNS name) or internal (a trial)
    cert_file: /etc/gpuhub/tls/fullchain.pem   # files: the PEM chain, on the manager
    key_file: /etc/gpuhub/tls/privkey.pem      # files: its key, on the manager
    acme_email: ""       # acme: the ACME account's e-mail address
  database: postgres     # postgres (a db service in the stack) or sqlite (a one-machine trial)
  registry_port: 5000    # the stack's registry on the manager, read-only: the nodes pull from it
  secrets_dir: /etc/gpuhub/secrets   # generated secrets on the manager (0700, files 0600)
  stack_name: gpuhub     # prefixes its services, networks, volumes and secrets
  push_images: []        # images from images.allowed pushed into the registry at each deploy
  grafana_image: ""      # Grafana at <public_url>/grafana/ by its upstream image, e.g.
                         # grafana/grafana-oss:11.3.0 (gpuhub builds none); empty: no Grafana

storage:                 # users' ~/scratch and ~/my-tutorials volumes
  nfs: null              # null: volumes on each node (on a swarm a user's next server goes to the
                         # node holding them, or they choose). NFS makes them follow users:
                         # nfs: {server: 10.0.0.5, export_root: /export/gpuhub, options: "nfsvers=4.1"}
                         # (a directory <export_root>/<user>/{scratch,tutorials-copy} per user)
"""
