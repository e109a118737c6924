"""The GPU spawners' configuration: every trait they share, with its help text and its checks.

Both spawners (``GPUDockerSpawner``, ``GPUSwarmSpawner``) inherit these; set them as
``c.GPUDockerSpawner.<name>`` or ``c.GPUSwarmSpawner.<name>``.  Checks run when the config is
loaded, so a bad value stops the hub at start with the trait, the value and the fix.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from gpuhub_spawner.core import isolation
from gpuhub_spawner.core.quotas import QuotaError, parse_quota
from gpuhub_spawner.core.volumes import check_source


class GPUSpawnerSettings(LoggingConfigurable):
    """The configuration both GPU spawners share (no behaviour: see ``GPUSpawnerMixin``)."""

    # ---- inventory ------------------------------------------------------------------
    gpu_inventory = List(
        config=True,
        help="""Static GPU inventory, used where NVML is absent (or with gpu_discovery='static').

        A list of GPUs, each with its full UUID, and either its MIG instances or a replica count
        for time-slicing::

            c.GPUDockerSpawner.gpu_inventory = [
                {"uuid": "GPU-8a1f...", "mig": [{"uuid": "MIG-41c2...", "profile": "1g.10gb"}]},
                {"uuid": "GPU-3e77...", "replicas": 4, "memory_mb": 81920},
            ]
        """,
    )
    gpu_discovery = Unicode(
        "auto",
        config=True,
        help="""Where the GPU inventory comes from: 'auto' (NVML when present, else gpu_inventory),
        'nvml' (fail if NVML is absent) or 'static' (gpu_inventory only).

            c.GPUDockerSpawner.gpu_discovery = "static"
        """,
    )
    gpu_replicas_per_gpu = Int(
        1,
        config=True,
        help="""Time-slicing: how many servers share each non-MIG GPU (1 = whole GPUs).

        Shared slots have no memory isolation; the UI says so. A GPU in gpu_inventory can set
        its own 'replicas'.

            c.GPUDockerSpawner.gpu_replicas_per_gpu = 4
        """,
    )
    gpu_profiles = List(
        config=True,
        help="""The profiles users choose from; empty means one per pool plus 'CPU only'.

        Each entry: slug, display_name, pool (a pool name such as 'gpu', 'shared',
        'mig-1g.10gb', or None for CPU-only), and optionally description, mem_limit,
        cpu_limit, default::

            c.GPUDockerSpawner.gpu_profiles = [
                {"slug": "small", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb", "default": True},
                {"slug": "cpu", "display_name": "CPU only", "pool": None},
            ]
        """,
    )
    gpu_queue_max_wait = Float(
        300,
        config=True,
        help="""Seconds a spawn waits in line for a GPU unit when its pool is empty.

        Users see their place in line while they wait. 0 refuses at once with a clear message.
        start_timeout is raised to cover the wait.

            c.GPUDockerSpawner.gpu_queue_max_wait = 120
        """,
    )
    gpu_fair_share_half_life = Float(
        24.0,
        config=True,
        help="""Hours after which past GPU use counts half in the line's order (fair share).

        Within a priority, people who used less GPU time lately go ahead in a pool's line;
        each GPU-hour fades by half every this many hours (needs the usage ledger). With no
        history, or equal use, the line is first come, first served. 0 turns it off.

            c.GPUDockerSpawner.gpu_fair_share_half_life = 72  # a course's week
        """,
    )
    gpu_reservation_grace = Float(
        10.0,
        config=True,
        help="""Minutes a group's reserved units (group property ``gpu_reservations``) stay kept
        for it from the start of each window; after that the ones its members have not taken are
        lent to others, and its members still go first in line (core/reservations.py).""",
    )
    gpu_hub_id = Unicode(
        "gpuhub",
        config=True,
        help="""Name of this hub in the labels of the objects it creates.

        Only needed when two hubs share one Docker engine: each then cleans up only its own.

            c.GPUDockerSpawner.gpu_hub_id = "course-a"
        """,
    )
    gpu_memory_hints = Bool(
        True,
        config=True,
        help="""On shared GPU slots, set environment variables that ask frameworks to use
        only their share of GPU memory (JAX's XLA_PYTHON_CLIENT_MEM_FRACTION, TensorFlow's
        memory growth, and GPUHUB_GPU_MEMORY_LIMIT_MB for user code). Hints, not limits.
        """,
    )
    gpu_shared_limit = Enum(
        ["hints", "mps"],
        "hints",
        config=True,
        help="""How shared GPU slots are limited: 'hints' (framework hints only, see
        gpu_memory_hints) or 'mps' (CUDA MPS: each server's GPU memory and thread share are
        enforced by the GPU's MPS daemon, which `gpuhub node setup --mps` runs).

        With 'mps', a shared-slot spawn whose GPU has no running MPS daemon is refused (never
        started unlimited). A GPU whose daemon runs gets its clients wired either way. The spawn
        form says which kind of limit applies.

            c.GPUDockerSpawner.gpu_shared_limit = "mps"
        """,
    )

    quota_defaults = Dict(
        config=True,
        help="""Quota of every user before their groups' values (JupyterHub group properties).

        Fields: allowed_profiles, max_gpu_units, gpu_hours_per_period, period, max_session_hours,
        cpu_limit, mem_limit, max_named_servers, priority. A user in several groups gets the most
        permissive value of each field. Enforced at spawn, whatever the client sends::

            c.GPUDockerSpawner.quota_defaults = {"max_gpu_units": 1, "allowed_profiles": "cpu,shared"}

        Admins change a group's quota in the admin panel (group properties, e.g. max_gpu_units=2);
        it applies from the next spawn. GPU-hour budgets need the usage ledger (usage_db_url).
        """,
    )

    usage_db_url = Unicode(
        "",
        config=True,
        help="""Database of the GPU usage ledger and per-user quota overrides (SQLAlchemy URL).

        sqlite by default in the embedded config; PostgreSQL by URL. Empty: no ledger, so
        GPU-hour budgets cannot be enforced (a warning says so when a quota sets one).

            c.GPUDockerSpawner.usage_db_url = "postgresql+psycopg://gpuhub@db/gpuhub"
        """,
    )

    # ---- limits: user servers are untrusted ------------------------------------------
    default_mem_limit = Unicode(
        isolation.DEFAULT_MEM_LIMIT,
        config=True,
        help="""Memory of a server whose profile and quota set no ``mem_limit`` (RAM; no swap beyond it).

        A profile's or quota's ``mem_limit`` wins; this applies when neither sets one, so no
        server runs without a memory limit. A server that goes past it has its largest process
        killed by the kernel's OOM killer; the host, the hub and other users are not affected.

            c.GPUDockerSpawner.default_mem_limit = "16G"
        """,
    )
    default_cpu_limit = Float(
        isolation.DEFAULT_CPU_LIMIT,
        config=True,
        help="""CPUs of a server whose profile and quota set no ``cpu_limit``.

        A profile's or quota's ``cpu_limit`` wins. On a swarm, a node with fewer CPUs than the
        limit refuses the task: keep it at or below your smallest node's CPU count.

            c.GPUDockerSpawner.default_cpu_limit = 4
        """,
    )
    pids_limit = Int(
        isolation.DEFAULT_PIDS_LIMIT,
        config=True,
        help="""Processes and threads one server may have at once (stops fork bombs).

            c.GPUDockerSpawner.pids_limit = 4096
        """,
    )

    # ---- volumes ---------------------------------------------------------------------
    tutorials_source = Unicode(
        "gpuhub-tutorials",
        config=True,
        help="""The shared tutorials, mounted read-only: a named volume or an absolute host path.
        Empty: no tutorials mount.

            c.GPUDockerSpawner.tutorials_source = "/srv/tutorials"
        """,
    )
    tutorials_mount_path = Unicode(
        "/opt/gpuhub/tutorials",
        config=True,
        help="""Where the tutorials are mounted in the container. The image's start script links
        ~/tutorials to it (to its `current` version when the tutorial-sync service publishes it).""",
    )
    scratch_volume_name = Unicode(
        "gpuhub-{username}-scratch",
        config=True,
        help="""Template of the per-user scratch volume ({username} is escaped). Empty: none.""",
    )
    scratch_mount_path = Unicode("/home/jovyan/scratch", config=True, help="Where scratch appears.")
    tutorials_copy_volume_name = Unicode(
        "gpuhub-{username}-my-tutorials",
        config=True,
        help="""Template of the per-user volume holding the editable copy of the tutorials.
        Empty: no editable copy.""",
    )
    tutorials_copy_mount_path = Unicode(
        "/home/jovyan/my-tutorials", config=True, help="Where the editable copy appears."
    )

    @validate("gpu_discovery")
    def _check_discovery(self, proposal: Any) -> str:
        if proposal.value not in ("auto", "nvml", "static"):
            raise TraitError(
                f"gpu_discovery={proposal.value!r} is not one of 'auto', 'nvml', 'static'. "
                "Use 'auto' unless you need to force one."
            )
        return proposal.value

    @validate("gpu_replicas_per_gpu")
    def _check_replicas(self, proposal: Any) -> int:
        value = proposal.value
        if value < 1:
            raise TraitError(f"gpu_replicas_per_gpu={value!r} must be a whole number ≥ 1, e.g. 4.")
        return value

    @validate("tutorials_source")
    def _check_tutorials(self, proposal: Any) -> str:
        problem = check_source("tutorials_source", proposal.value)
        if problem:
            raise TraitError(problem)
        return proposal.value

    @validate("quota_defaults")
    def _check_quota_defaults(self, proposal: Any) -> dict:
        try:
            parse_quota(proposal.value, "quota_defaults")
        except QuotaError as e:
            raise TraitError(f"quota_defaults: {e}") from None
        return proposal.value

    @validate("default_mem_limit")
    def _check_default_mem(self, proposal: Any) -> str:
        try:
            isolation.parse_memory(proposal.value)
        except ValueError:
            raise TraitError(
                f"default_mem_limit={proposal.value!r} is not a memory size of at least 6M. "
                "Use e.g. '8G' or '512M' (there is no 'unlimited': set a size)."
            ) from None
        return proposal.value

    @validate("default_cpu_limit")
    def _check_default_cpu(self, proposal: Any) -> float:
        if not 0.01 <= proposal.value < 1e6:
            raise TraitError(f"default_cpu_limit={proposal.value!r} must be a number of CPUs ≥ 0.01, e.g. 2.")
        return proposal.value

    @validate("pids_limit")
    def _check_pids(self, proposal: Any) -> int:
        if proposal.value < 64:
            raise TraitError(
                f"pids_limit={proposal.value!r} is too small for JupyterLab; use a whole number ≥ 64, e.g. 2048."
            )
        return proposal.value

    @validate("gpu_fair_share_half_life")
    def _check_half_life(self, proposal: Any) -> float:
        if not 0 <= proposal.value <= 24 * 365:
            raise TraitError(
                f"gpu_fair_share_half_life={proposal.value!r} must be between 0 (off) and 8760 hours."
            )
        return proposal.value

    @validate("gpu_queue_max_wait")
    def _check_wait(self, proposal: Any) -> float:
        if proposal.value < 0:
            raise TraitError(f"gpu_queue_max_wait={proposal.value!r} must be ≥ 0 seconds (0 refuses at once).")
        return proposal.value
