"""What the GPU spawners share: config traits, profiles, quotas, allocation, progress, errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

import requests
from docker.errors import APIError, DockerException
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from gpuhub_spawner.core import isolation
from gpuhub_spawner.core.inventory import (
    Inventory,
    InventoryError,
    Profile,
    Unit,
    pool_label,
    profiles_from_config,
    units_from_gpus,
)
from gpuhub_spawner.core.labels import (  # noqa: F401 - re-exported for the spawners
    LABEL_HUB,
    LABEL_POOL,
    LABEL_PREFIX,
    LABEL_PROFILE,
    LABEL_SERVER,
    LABEL_UNIT,
    LABEL_USER,
    ServerLabels,
)
from gpuhub_spawner.core.quotas import (
    QuotaError,
    QuotaPolicy,
    budget_left_seconds,
    check_spawn,
    parse_bytes,
    parse_quota,
    period_bounds,
    resolve_policy,
)
from gpuhub_spawner.core.volumes import VolumePlan, check_source
from gpuhub_spawner.hub import forms
from gpuhub_spawner.hub.allocator import Allocator, HeldRecord, NoUnitFree, OverLimit, StillHeld
from gpuhub_spawner.hub.errors import spawn_error
from gpuhub_spawner.hub.state import LEGACY_QUEUE_SOURCES, HubState
from gpuhub_spawner.node.nvml import discover_or_none
from gpuhub_spawner.storage.ledger import UsageLedger

# resolved once per process: NVML discovery and config parsing are not redone per spawner
_INVENTORY_CACHE: dict[str, Inventory] = {}
#: this hub process, in the notice table: a "starting" row of another process is a start a crash cut off
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

#: Deprecated alias (the swarm spawner's gates): use ``HubState.for_hub(hub_id).gate(key, factory)``
QUEUE_SOURCES = LEGACY_QUEUE_SOURCES


def resolve_inventory(gpus: list, discovery: str, replicas: int) -> Inventory:
    """The inventory from NVML (``auto``/``nvml``) or the static list; cached per process."""
    key = json.dumps([gpus, discovery, replicas], sort_keys=True, default=str)
    if key not in _INVENTORY_CACHE:
        described = None
        if discovery in ("auto", "nvml"):
            described = discover_or_none()
            if described is None and discovery == "nvml":
                raise InventoryError(
                    "gpu_discovery",
                    "'nvml' was asked for but NVML is not available on this host",
                    "Install the NVIDIA driver, or set gpu_discovery='static' and list the GPUs in gpu_inventory.",
                )
        if described is None:
            described = gpus
        _INVENTORY_CACHE[key] = Inventory(tuple(units_from_gpus(described, replicas)))
    return _INVENTORY_CACHE[key]


class GPUSpawnerMixin(LoggingConfigurable):
    """What the Docker and Swarm GPU spawners share: config, profiles, allocation, progress."""

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

    @validate("gpu_queue_max_wait")
    def _check_wait(self, proposal: Any) -> float:
        if proposal.value < 0:
            raise TraitError(f"gpu_queue_max_wait={proposal.value!r} must be ≥ 0 seconds (0 refuses at once).")
        return proposal.value

    @default("start_timeout")
    def _start_timeout_covers_queue(self) -> int:
        return int(self.gpu_queue_max_wait) + 120

    @default("options_form")
    def _default_gpu_options_form(self) -> Any:
        return type(self)._render_gpu_form

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        # the profile is checked (with the user's quota) when the server is created; this only
        # tells JupyterHub that 'profile' is handled, and flags anything else
        def note_options(spawner: Any, user_options: dict) -> None:
            unknown = sorted(set(user_options or {}) - {"profile"})
            if unknown:
                spawner.log.warning("Ignoring unknown user_options for %s: %s", spawner._log_name, unknown)

        return note_options

    @default("options_from_form")
    def _default_gpu_options_from_form(self) -> Any:
        return forms.options_from_form

    # ---- runtime state (persisted by get_state) --------------------------------------

    gpu_unit_id: str = ""
    gpu_profile_slug: str = ""

    def _progress_init(self) -> None:
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        # a new start answers an old notice; until it ends, a hub crash leaves this row to say so
        self._notice_in_background("mark_starting", PROCESS_ID)

    def _start_finished(self) -> None:
        """The start ended (ready or failed, either way the user was told): no notice left."""
        self._notice_in_background("clear_notice")

    # ---- notices on the hub's pages ---------------------------------------------------

    #: what a user is told when the hub, starting again, finds their start cut off
    STOPPED_WHILE_DOWN = (
        "The start of your server '{server}' was cut off when the hub restarted. Your files are "
        "kept: start it again from the home page."
    )

    def _seen_running(self) -> None:
        """poll() found the server running (e.g. adopted after a crash): a notice that its start
        was cut off is old news.  Once per spawner object, so polls do not write each time."""
        if not getattr(self, "_notice_answered", False):
            self._notice_answered = True
            self._notice_in_background("clear_notice")

    def _notice_in_background(self, method: str, *args: str) -> None:
        """Write to the notice table in a thread: a slow database never holds a start or stop."""
        if not self.usage_db_url:
            return

        def write() -> None:
            try:
                getattr(self.usage_ledger, method)(self.user.name, self.name or "", *args)
            except Exception as e:  # noqa: BLE001 - a notice lost is logged, never fatal
                self.log.warning("Could not %s for %s: %s", method.replace("_", " "), self._log_name, e)

        try:
            asyncio.get_running_loop().run_in_executor(self.hub_state.notice_writer, write)  # in order
        except RuntimeError:  # no event loop (a unit test): nothing to tell
            pass

    def _emit(self, progress: int, message: str) -> None:
        if not hasattr(self, "_progress_events"):
            self._progress_init()
        self._progress_events.append({"progress": progress, "message": message})
        self._progress_changed.set()

    async def progress(self):
        """Stream the real steps of this spawn: reserving, place in line, assignment, start."""
        if not hasattr(self, "_progress_events"):
            self._progress_init()
        sent = 0
        while True:
            events = self._progress_events
            while sent < len(events):
                yield events[sent]
                sent += 1
            self._progress_changed.clear()
            try:
                await asyncio.wait_for(self._progress_changed.wait(), 1)
            except TimeoutError:
                if not (self._spawn_pending or self._start_pending):
                    return

    # ---- inventory, profiles, allocator ----------------------------------------------

    @property
    def gpu_inventory_resolved(self) -> Inventory:
        # config does not change while the hub runs: resolve once per spawner
        cached = self.__dict__.get("_inventory")
        if cached is None:
            cached = resolve_inventory(list(self.gpu_inventory), self.gpu_discovery, int(self.gpu_replicas_per_gpu))
            self.__dict__["_inventory"] = cached
        return cached

    @property
    def profiles(self) -> list[Profile]:
        return profiles_from_config(list(self.gpu_profiles), self.gpu_inventory_resolved)

    @property
    def usage_ledger(self) -> UsageLedger | None:
        if not self.usage_db_url:
            return None
        return self.hub_state.ledger(self.usage_db_url)  # opened from worker threads too

    async def ledger_in_thread(self) -> UsageLedger | None:
        """:attr:`usage_ledger`, opened off the event loop (opening creates missing tables)."""
        if not self.usage_db_url or self.hub_state.has_ledger(self.usage_db_url):
            return self.usage_ledger
        return await asyncio.to_thread(lambda: self.usage_ledger)

    #: seconds between tries of the start-up sync while the engine or database does not answer
    startup_sync_retry_delays: tuple[float, ...] = (5, 10, 30, 60, 120)

    def schedule_startup_sync(self) -> None:
        """Sync with the engine and the ledger as soon as the hub process makes its first spawner.

        The hub (re)starting makes a spawner for every user with a server: leftovers of spawns a
        crash cut off are removed, their units freed and their usage rows closed then, not when
        somebody next opens the spawn page.  Outside a running event loop nothing is scheduled.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        syncs = self.hub_state.startup_syncs
        key = self._engine_key()
        if key in syncs:
            return

        async def sync() -> None:
            for delay in (0, *self.startup_sync_retry_delays):
                await asyncio.sleep(delay)
                try:
                    await self.sync_allocations()
                    await self._tell_cut_off_starts()
                    return
                except Exception as e:  # noqa: BLE001 - engine or database down: try again later
                    self.log.warning("GPU allocations not synced at start (%s); trying again", e)
            self.log.error("GPU allocations could not be synced at start; the next spawn tries again")

        syncs[key] = asyncio.ensure_future(sync())

    async def _tell_cut_off_starts(self) -> None:
        ledger = await self.ledger_in_thread()
        if ledger is not None:
            told = await asyncio.to_thread(ledger.expire_starting, PROCESS_ID, self.STOPPED_WHILE_DOWN)
            if told:
                self.log.info("%d start(s) were cut off by the hub's restart; their users are told", told)

    async def sync_allocations(self) -> None:
        """Rebuild the held set from the engine once; then close ledger rows of vanished servers."""
        allocator = self.get_allocator()
        await allocator.ensure_synced()
        ledger = await self.ledger_in_thread()
        key = (self._engine_key(), self.usage_db_url)
        reconciled = self.hub_state.ledgers_reconciled
        if ledger is not None and key not in reconciled:
            reconciled.add(key)
            holders = set(allocator.ledger.holders())
            closed = await asyncio.to_thread(ledger.close_all_except, holders)
            if closed:
                self.log.info("Closed %d GPU usage interval(s) of servers gone while the hub was down", closed)

    async def record_usage(self, unit: Unit | None, holder: str) -> None:
        ledger = self.usage_ledger
        if ledger is not None and unit is not None:
            await asyncio.to_thread(
                ledger.start, self.user.name, self.name or "", unit.id, unit.pool, holder, unit.node
            )

    async def end_usage(self, holder: str) -> None:
        ledger = self.usage_ledger
        if ledger is not None:
            await asyncio.to_thread(ledger.end, holder)

    async def quota_policy(self) -> QuotaPolicy:
        """This user's quota now: defaults, their groups' properties, their override (read fresh).

        The override is read in a worker thread: a slow database must not stall the hub.
        """
        groups = [dict(group.properties or {}) for group in self.user.groups]
        ledger = await self.ledger_in_thread()
        override = await asyncio.to_thread(ledger.get_override, self.user.name) if ledger is not None else None
        try:
            return resolve_policy(self.quota_defaults, groups, override)
        except QuotaError as e:
            raise spawn_error(
                "Your quota settings cannot be read, so no server can start. Tell the hub's admin.",
                "config-error",
                log_message=f"bad quota for {self.user.name}: {e}",
            ) from None

    async def allowed_profiles(self) -> set[str] | None:
        """Slugs this user may choose, or None for all."""
        allowed = (await self.quota_policy()).allowed_profiles
        return None if allowed is None else set(allowed)

    def gpu_units_held_by_user(self) -> int:
        """GPU units this user's other servers hold right now."""
        return sum(
            1
            for spawner in self.user.spawners.values()
            if spawner is not self and getattr(spawner, "gpu_unit_id", "") and spawner.active
        )

    async def gpu_seconds_used(self, policy: QuotaPolicy, now: datetime) -> float:
        """GPU-seconds this user used in the current budget period (0 without a ledger)."""
        ledger = self.usage_ledger
        if ledger is None:
            if policy.gpu_hours_per_period is not None:
                self.log.warning("A GPU-hour budget is set but usage_db_url is empty: it is not enforced")
            return 0.0
        since, _ = period_bounds(now, policy.period)
        return await asyncio.to_thread(ledger.gpu_seconds, self.user.name, since, now)

    async def check_quota(self, profile: Profile, policy: QuotaPolicy | None = None) -> QuotaPolicy:
        """Refuse the spawn if the user's quota (``policy``, else read now) does not allow ``profile``."""
        if policy is None:
            policy = await self.quota_policy()
        now = datetime.now(timezone.utc)
        gpu = not profile.cpu_only
        decision = check_spawn(
            policy,
            profile.slug,
            gpu=gpu,
            units_held=self.gpu_units_held_by_user() if gpu else 0,
            gpu_seconds_used=await self.gpu_seconds_used(policy, now) if gpu else 0.0,
            now=now,
        )
        if not decision.ok:
            raise spawn_error(decision.message, decision.reason)
        if self.name and policy.max_named_servers is not None:
            named = sum(1 for n, sp in self.user.spawners.items() if n and sp is not self and sp.active)
            if named >= policy.max_named_servers:
                raise spawn_error(
                    f"Your quota allows {policy.max_named_servers} named server(s) at once and you have "
                    f"{named}. Stop one first.",
                    "quota-exceeded",
                )
        return policy

    async def checked_profile(self) -> Profile:
        """The profile asked for, checked against the form's choices and the user's quota now."""
        profile = self.choose_profile(await self.allowed_profiles())
        self._quota = await self.check_quota(profile)
        self.gpu_profile_slug = profile.slug
        return profile

    def choose_profile(self, allowed: set[str] | None) -> Profile:
        try:
            return forms.choose_profile(self.profiles, self.user_options or {}, allowed)
        except forms.ProfileChoiceError as e:
            raise spawn_error(str(e), e.reason) from None

    def _engine_key(self) -> str:
        raise NotImplementedError

    async def _list_held(self) -> list[HeldRecord]:
        raise NotImplementedError

    async def _remove_stale(self, record: HeldRecord) -> None:
        raise NotImplementedError

    @property
    def hub_state(self) -> HubState:
        """What this hub's spawners share: allocators, gates, ledgers, background work."""
        return HubState.for_hub(self.gpu_hub_id)

    def get_allocator(self) -> Allocator:
        return self.hub_state.allocator(
            self._engine_key(),
            lambda: Allocator(self.gpu_inventory_resolved, self._list_held, self._remove_stale),
        )

    async def _render_gpu_form(self) -> str:
        inventory = self.gpu_inventory_resolved
        allocator = self.get_allocator()
        try:
            await self.sync_allocations()
        except Exception as e:  # noqa: BLE001 - show the form even if the engine is down
            self.log.warning("Could not read GPU usage for the options form: %s", e)
        sizes = {pool: inventory.pool_size(pool) for pool in inventory.pools}
        waiting = {pool: allocator.queue_length(pool) for pool in inventory.pools}
        policy = await self.quota_policy()
        allowed = None if policy.allowed_profiles is None else set(policy.allowed_profiles)
        return forms.render_options_form(
            self.profiles, allocator.free_counts(), sizes, waiting, allowed, await self._budget_notice(policy),
            template_paths=self.hub_template_paths,
        )

    @property
    def hub_template_paths(self) -> list[str]:
        """The hub's template search path (``c.JupyterHub.template_paths``, as the hub passes it
        to its users): an operator's ``gpuhub_spawn_form.html`` there replaces gpuhub's form."""
        settings = getattr(getattr(self, "user", None), "settings", None) or {}
        return [str(p) for p in settings.get("template_path") or []]

    async def _budget_notice(self, policy: QuotaPolicy) -> str:
        """'GPU time left this week: 1.5 h', when the user has a GPU-hour budget."""
        if policy.gpu_hours_per_period is None or self.usage_ledger is None:
            return ""
        used = await self.gpu_seconds_used(policy, datetime.now(timezone.utc))
        left = budget_left_seconds(policy, used) or 0.0
        when = {"day": "today", "week": "this week", "month": "this month"}.get(policy.period, "in total")
        return f"GPU time left {when}: {left / 3600:.1f} h of {policy.gpu_hours_per_period:g} h."

    async def reserve_unit(self, profile: Profile, priority: int = 0):
        """Context manager reserving a unit of ``profile``'s pool, with progress and errors."""
        allocator = self.get_allocator()
        on_position = self._start_reserving(profile.pool)
        try:
            await self.sync_allocations()
        except (DockerException, requests.RequestException) as e:
            raise self._engine_error(e) from None
        quota = getattr(self, "_quota", None)
        return allocator.reserve(
            profile.pool,
            self.object_name,
            self.gpu_queue_max_wait,
            on_position,
            priority=priority,
            owner=self.user.name,
            max_units=quota.max_gpu_units if quota is not None else None,
        )

    def reservation_error(self, err: Exception) -> Exception:
        """The user's message for a reservation the allocator (or swarm gate) refused."""
        if isinstance(err, NoUnitFree):
            return self.no_unit_error(err)
        if isinstance(err, OverLimit):
            units = f"{err.limit} GPU unit" + ("" if err.limit == 1 else "s")
            if err.waiting:
                msg = (
                    f"Your quota allows {units} at once, and another of your servers is already "
                    "holding or waiting in line for one. Stop or cancel that server first, or start "
                    "a CPU-only server."
                )
            else:
                msg = (
                    f"You already hold {units}, the most your quota allows. Stop another GPU "
                    "server first, or start a CPU-only server."
                )
            return spawn_error(msg, "quota-exceeded", log_message=f"{self._log_name}: {msg}")
        if isinstance(err, StillHeld):
            return spawn_error(
                "Your previous server is still shutting down and holds its GPU. Please try again "
                "in a minute; if it keeps happening, tell the hub's admin.",
                "engine-unavailable",
                log_message=f"{self._log_name}: old object still holds {err.unit_id}",
            )
        raise TypeError(err)

    def _start_reserving(self, pool: str):
        """Say a unit is being reserved; returns the callback that streams the place in line."""
        label = pool_label(pool)
        self._emit(10, f"Reserving a {label}…")
        loop = asyncio.get_running_loop()
        started = loop.time()

        def on_position(position: int, total: int) -> None:
            waited = int(loop.time() - started)
            self._emit(
                15,
                f"All {label} units are in use. You are #{position} of {total} in line "
                f"(waited {waited}s, at most {int(self.gpu_queue_max_wait)}s). "
                "Or cancel and start a CPU-only server.",
            )

        return on_position

    def _pool_size(self, pool: str) -> int:
        return self.gpu_inventory_resolved.pool_size(pool)

    def no_unit_error(self, err: NoUnitFree) -> Exception:
        label = pool_label(err.pool)
        size = self._pool_size(err.pool)
        if err.waited:
            msg = (
                f"No {label} came free within {int(err.waited)} seconds "
                f"(all {size} are in use; you were #{err.position or 1} in line). "
                "Try again later, or start a CPU-only server."
            )
        else:
            msg = f"All {size} {label} units are in use. Try again later, or start a CPU-only server."
        return spawn_error(msg, "gpu-unavailable")

    def _engine_error(self, err: BaseException, doing: str = "start") -> Exception:
        """The user's message for an engine error (its raw text goes to the log only)."""
        if isinstance(err, APIError):
            what = f"The container engine could not {doing} your server"
        elif isinstance(err, (DockerException, requests.RequestException, ConnectionError, TimeoutError)):
            what = f"The container engine is not answering, so your server cannot {doing} right now"
        else:  # a fault of the hub itself (its database, a bug): the log has the details
            what = f"Your server could not {doing} because of an error on the hub"
        return spawn_error(
            f"{what}. Please try again in a minute; if it keeps happening, tell the hub's admin.",
            "engine-unavailable",
            log_message=f"Docker engine error for {self._log_name}: {err}",
        )

    async def get_object(self):
        """The engine's object, or None only when the engine says it does not exist (404).

        dockerspawner also takes a 500 for "gone"; but the object may still run and hold its
        GPU, so any other error is raised (poll reports the server as still running).
        """
        try:
            obj = await self.docker(f"inspect_{self.object_type}", self.object_name)
        except APIError as e:
            if e.status_code == 404:
                self.object_id = ""
                return None
            raise
        self.object_id = obj[self.object_id_key]
        return obj

    def gpu_env(self, unit: Unit | None) -> dict[str, str]:
        """Environment for the unit: void devices for CPU-only, memory hints on shared slots."""
        if unit is None:
            return {"NVIDIA_VISIBLE_DEVICES": "void", "GPUHUB_GPU_UNIT": ""}
        env = {"GPUHUB_GPU_UNIT": unit.id, "GPUHUB_GPU_KIND": unit.kind}
        if unit.shared and self.gpu_memory_hints:
            env["GPUHUB_GPU_SHARED"] = "1"
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / unit.slots:.3f}"
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            if unit.memory_mb:
                env["GPUHUB_GPU_MEMORY_LIMIT_MB"] = str(unit.memory_mb)
        return env

    # ---- shared by both spawners ------------------------------------------------------

    def resource_limits(self) -> isolation.Limits:
        """This server's limits: the stricter of the profile's and the quota's, else the defaults."""
        profile = self._profile_by_slug(self.gpu_profile_slug)
        quota = getattr(self, "_quota", None)
        defaults = isolation.Limits(
            isolation.parse_memory(self.default_mem_limit), self.default_cpu_limit, self.pids_limit
        )
        return isolation.resolve_limits(
            parse_bytes(profile.mem_limit) if profile and profile.mem_limit else None,
            profile.cpu_limit if profile else None,
            quota.mem_limit if quota is not None else None,
            quota.cpu_limit if quota is not None else None,
            defaults,
        )

    def _limits(self) -> tuple[int, float]:
        """Memory bytes and CPUs of this server (see :meth:`resource_limits`)."""
        limits = self.resource_limits()
        return limits.memory, limits.cpus

    def _profile_by_slug(self, slug: str) -> Profile | None:
        return next((p for p in self.profiles if p.slug == slug), None)

    def volume_plan(self) -> VolumePlan:
        ns = self.template_namespace()
        return VolumePlan(
            user=self.user.name,
            tutorials_source=self.tutorials_source,
            tutorials_target=self.tutorials_mount_path,
            scratch_volume=self.scratch_volume_name.format(**ns) if self.scratch_volume_name else "",
            scratch_target=self.scratch_mount_path,
            copy_volume=self.tutorials_copy_volume_name.format(**ns) if self.tutorials_copy_volume_name else "",
            copy_target=self.tutorials_copy_mount_path,
        )

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.load_gpu_state(state)
        self.schedule_startup_sync()

    async def adopt_unit(self, labels: dict[str, str]) -> None:
        """A running server whose state has no unit (the hub died between creating it and saving
        its state) takes the unit its labels name: counted in quotas, freed and charged as usual."""
        parsed = ServerLabels.from_labels(labels)
        unit_id = parsed.unit
        if not unit_id or self.gpu_unit_id or parsed.hub != self.gpu_hub_id:
            return
        self.gpu_unit_id = unit_id
        self.gpu_profile_slug = self.gpu_profile_slug or parsed.profile
        await self.get_allocator().ensure_synced()  # the labels: the unit is held by this server
        unit = self.gpu_inventory_resolved.by_id.get(unit_id)
        ledger = await self.ledger_in_thread()
        if ledger is not None and unit is not None and not await asyncio.to_thread(ledger.is_open, self.object_name):
            await self.record_usage(unit, self.object_name)
        self.log.info("%s runs with GPU unit %s (from its labels): adopted", self._log_name, unit_id)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update(self.gpu_state())
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_unit_id = ""
        self.gpu_profile_slug = ""

    def load_gpu_state(self, state: dict[str, Any]) -> None:
        self.gpu_unit_id = state.get("gpu_unit", "")
        self.gpu_profile_slug = state.get("gpu_profile", "")

    def gpu_state(self) -> dict[str, Any]:
        state = {}
        if self.gpu_unit_id:
            state["gpu_unit"] = self.gpu_unit_id
        if self.gpu_profile_slug:
            state["gpu_profile"] = self.gpu_profile_slug
        return state
