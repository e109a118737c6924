"""What the GPU spawners share: profiles, admission, allocation, errors, the server's limits.

The pieces live beside it: configuration traits in :mod:`~gpuhub_spawner.hub.settings`, the
admission decision in :mod:`~gpuhub_spawner.hub.admission`, the progress stream and notices in
:mod:`~gpuhub_spawner.hub.progress`, the usage database in :mod:`~gpuhub_spawner.hub.usage`,
and what the spawners of one hub share in :mod:`~gpuhub_spawner.hub.state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import requests
from docker.errors import APIError, DockerException
from docker.types import Mount
from tornado import web
from traitlets import default

from gpuhub_spawner.core import fairshare, isolation, mps
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
from gpuhub_spawner.core.mig_profiles import memory_sharers
from gpuhub_spawner.core.volumes import VolumePlan
from gpuhub_spawner.hub import admission, forms, profile_image
from gpuhub_spawner.hub.admission import Choice
from gpuhub_spawner.hub.allocator import Allocator, HeldRecord, NoUnitFree, OverLimit, StillHeld
from gpuhub_spawner.hub.errors import quiet_refusal_tracebacks, spawn_error
from gpuhub_spawner.hub.fairline import FairLine
from gpuhub_spawner.hub.groupshare import GroupShares
from gpuhub_spawner.hub.progress import PROCESS_ID, SpawnProgress
from gpuhub_spawner.hub.settings import GPUSpawnerSettings
from gpuhub_spawner.hub.state import HubState
from gpuhub_spawner.hub.usage import UsageRecords
from gpuhub_spawner.hub.waitestimate import LineWait
from gpuhub_spawner.node.nvml import discover_or_none

# resolved once per process: NVML discovery and config parsing are not redone per spawner
_INVENTORY_CACHE: dict[str, Inventory] = {}

#: the one message for a server whose previous object still runs and holds its GPU
STILL_HELD = (
    "Your previous server is still shutting down and holds its GPU. Please try again in a minute; "
    "if it keeps happening, tell the hub's admin."
)


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


class GPUSpawnerMixin(SpawnProgress, UsageRecords, GroupShares, profile_image.ProfileImages, GPUSpawnerSettings):
    """What the Docker and Swarm GPU spawners share: profiles, admission, allocation, limits."""

    @default("start_timeout")
    def _start_timeout_covers_queue(self) -> int:
        return int(self.gpu_queue_max_wait) + 120

    @default("options_form")
    def _default_gpu_options_form(self) -> Any:
        return type(self)._render_gpu_form

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        # JupyterHub runs this before pre_spawn_hook and start: the request check
        return type(self).apply_gpu_options

    @default("options_from_form")
    def _default_gpu_options_from_form(self) -> Any:
        return profile_image.options_from_form

    # ---- runtime state (persisted by get_state) --------------------------------------

    gpu_unit_id: str = ""
    gpu_profile_slug: str = ""
    #: what this spawn was admitted with (not persisted: a restarted hub needs it no more)
    gpu_choice: Choice | None = None

    @property
    def gpu_unit(self) -> Unit | None:
        """The unit this server holds (or is being given), from :attr:`gpu_unit_id`."""
        return self.gpu_inventory_resolved.by_id.get(self.gpu_unit_id) if self.gpu_unit_id else None

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

    async def allowed_profiles(self) -> set[str] | None:
        """Slugs this user may choose, or None for all."""
        allowed = (await self.quota_policy()).allowed_profiles
        return None if allowed is None else set(allowed)

    # ---- the sign-in's re-check (auth.GPUHubGitHubAuthenticator.pre_spawn_start) --------

    #: the authenticator's check that the user may still use the hub, running beside admission
    _access_check: asyncio.Future | None = None

    def defer_access_check(self, check: asyncio.Future) -> None:
        """Take the authenticator's access check (already running): admission goes on beside
        it, and :meth:`access_checked` waits for it before anything is created."""
        check.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "not retrieved"
        self._access_check = check

    async def access_checked(self) -> None:
        """Wait for the deferred access check (if any); its refusal is this spawn's refusal."""
        check, self._access_check = self._access_check, None
        if check is None:
            return
        if not check.done():
            self._emit(5, "Checking with GitHub that you may still use this hub…")
        await check

    def _drop_access_check(self) -> None:
        check, self._access_check = self._access_check, None
        if check is not None and not check.done():
            check.cancel()

    # ---- admission: one decision, before anything starts ------------------------------

    async def apply_gpu_options(self, user_options: Any) -> None:
        """``apply_user_options``: admit the spawn or refuse it before anything starts.

        JupyterHub answers a refusal (an HTTPError) with its status and message: a REST spawn
        with a bad body, a forbidden profile or no quota left gets 400/403 and nothing is made.
        """
        self.gpu_choice = None
        if isinstance(self.log, logging.Logger):  # a refusal is an answer, not a traceback
            quiet_refusal_tracebacks(self.log)
        if isinstance(user_options, Mapping):
            unknown = sorted(set(user_options) - {"profile", "image", "placement"})
            if unknown:
                self.log.warning("Ignoring unknown user_options for %s: %s", self._log_name, unknown)
        # the start begins here: a hub crash from now on (admission reads the engine and the
        # database, which can take a while) leaves the row that tells the user after a restart
        self._notice_in_background("mark_starting", PROCESS_ID)
        try:
            self.gpu_choice = await self.admit(user_options)
        except BaseException:
            self._drop_access_check()  # refused anyway: GitHub's answer is not needed
            self._start_finished()  # refused: the answer tells them; no notice is left behind
            raise

    async def admitted_choice(self) -> Choice:
        """What this spawn was admitted with; decided now if ``apply_user_options`` did not run."""
        if self.gpu_choice is None:
            self.gpu_choice = await self.admit(self.user_options)
        return self.gpu_choice

    async def admit(self, user_options: Any) -> Choice:
        """The profile asked for, checked with the user's quota now (see :mod:`admission`)."""
        try:
            await self.sync_allocations()  # the pools as the engine has them (a swarm's nodes)
        except Exception as e:  # noqa: BLE001 - the profile can still be checked; units are re-read
            self.log.warning("Could not read the engine before admitting %s: %s", self._log_name, e)
        try:
            profile = admission.choose(self.profiles, user_options, await self.allowed_profiles())
            policy = await self.quota_policy()
            choice = Choice(profile, policy, admission.server_limits(profile, policy, self.default_limits()))
            refused = admission.decide(choice, await self.admission_facts(choice))
        except admission.Refused as e:
            refused = e
        except web.HTTPError:
            raise
        except Exception as e:  # noqa: BLE001 - engine or database down: a plain message
            raise self._engine_error(e) from None
        if refused is not None:
            raise spawn_error(refused.message, refused.reason, log_message=f"{self._log_name}: {refused.message}")
        await self.apply_image_choice(user_options)  # the profile's own image, or the user's allowed one
        self.gpu_profile_slug = choice.slug
        return choice

    async def admission_facts(self, choice: Choice) -> admission.Facts:
        """What the decision needs to know about the user's other servers and GPU time."""
        now = datetime.now(timezone.utc)
        named = sum(1 for name, sp in self.user.spawners.items() if name and sp is not self and sp.active)
        if not choice.gpu:
            return admission.Facts(now, self.name or "", named)
        held, waiting = (0, 0) if choice.policy.max_gpu_units is None else await self.gpu_units_at_once()
        used = await self.gpu_seconds_used(choice.policy, now)
        return admission.Facts(now, self.name or "", named, held, waiting, used)

    async def gpu_units_at_once(self) -> tuple[int, int]:
        """(units held, spawns in line) of this user's other servers, as the spawners know them;
        a spawner with an allocator adds reservations and its line (the lock re-checks them)."""
        held = sum(
            1
            for spawner in self.user.spawners.values()
            if spawner is not self and getattr(spawner, "gpu_unit_id", "") and spawner.active
        )
        return held, 0

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
            self.profiles, self.free_for_me(allocator.free_counts(), allocator.held_by_group), sizes, waiting,
            allowed, await self._form_notice(policy),
            template_paths=self.hub_template_paths, **self.image_form_fields(),
            limit_notes=self.shared_limit_notes(),
        )

    @property
    def hub_template_paths(self) -> list[str]:
        """The hub's template search path (``c.JupyterHub.template_paths``, as the hub passes it
        to its users): an operator's ``gpuhub_spawn_form.html`` there replaces gpuhub's form."""
        settings = getattr(getattr(self, "user", None), "settings", None) or {}
        return [str(p) for p in settings.get("template_path") or []]

    async def reserve_unit(self, choice: Choice):
        """Context manager reserving a unit of ``choice``'s pool, with progress and errors.

        The allocator re-checks the user's units at once under its lock (two requests at once
        cannot both pass the admission); a refusal there has the admission's wording.
        """
        allocator = self.get_allocator()
        pool = choice.profile.pool
        on_position = self._start_reserving(
            pool, allocator.line, counts=lambda: (allocator.free_counts().get(pool, 0), allocator.held_by_group(pool)))
        try:
            await self.sync_allocations()
        except (DockerException, requests.RequestException) as e:
            raise self._engine_error(e) from None
        return allocator.reserve(
            pool,
            self.object_name,
            self.gpu_queue_max_wait,
            on_position,
            priority=choice.policy.priority,
            owner=self.user.name,
            max_units=choice.policy.max_gpu_units,
            use=self.fair_share_use,  # read only if the spawn has to wait in line
            share=self.pool_share(pool, allocator.held_by_group(pool)),
        )

    def reservation_error(self, err: Exception) -> Exception:
        """The user's message for a reservation the allocator (or swarm gate) refused."""
        self.wait_over("refused")
        if isinstance(err, NoUnitFree):
            return self.no_unit_error(err)
        if isinstance(err, OverLimit):
            msg = admission.units_message(err.limit, err.held, err.waiting)
            return spawn_error(msg, "quota-exceeded", log_message=f"{self._log_name}: {msg}")
        if isinstance(err, StillHeld):
            return self.still_held_error(f"{self._log_name}: old object still holds {err.unit_id}")
        raise TypeError(err)

    def still_held_error(self, log_message: str) -> Exception:
        return spawn_error(STILL_HELD, "engine-unavailable", log_message=log_message)

    def _start_reserving(self, pool: str, line: FairLine | None = None, line_key: str = "",
                         counts: Callable[[], tuple[int, Mapping[str, int]]] | None = None):
        """Say a unit is being reserved; returns the callback that streams the place in line
        (and, from ``line``, why those ahead are ahead, and the likely wait, with what other
        groups keep given ``counts``: the pool's free units and the units each group holds)."""
        label = pool_label(pool)
        self._emit(10, f"Reserving a {label}…")
        loop = asyncio.get_running_loop()
        started = loop.time()
        last: list[int] = []  # the place told last: told again once the likely wait is known

        def on_position(position: int, total: int) -> None:
            last[:] = [position, total]
            waited = int(loop.time() - started)
            ahead = line.why_ahead(line_key or pool, self.object_name) if line is not None else None
            why = fairshare.ahead_text(ahead.higher_priority, ahead.less_use, ahead.earlier, ahead.own_use,
                                       float(self.gpu_fair_share_half_life)) if ahead else ""
            likely = self._line_wait.sentence(position) if self._line_wait is not None else ""
            reason, share = line.held_back(line_key or pool, self.object_name) if line is not None else ("", None)
            held_back = share.why(reason, label) if share is not None else ""
            self._emit(
                15,
                f"{held_back or f'All {label} units are in use.'} You are #{position} of {total} in line "
                f"(waited {waited}s, at most {int(self.gpu_queue_max_wait)}s). "
                + "".join(part + " " for part in (likely, why) if part)
                + "Or cancel and start a CPU-only server.",
            )

        who = self.user.name + (f"/{self.name}" if self.name else "")
        def kept() -> tuple[int, list]:
            free, held = counts()  # type: ignore[misc]
            return free, self.kept_from_me(pool, held)

        wait = LineWait(who, pool, float(self.gpu_queue_max_wait), lambda: self.pool_holds(pool),
                        lambda: on_position(*last) if last and self._line_wait is wait else None, self.log,
                        self.keep_wait, kept if counts is not None else None)
        self._line_wait = wait
        return on_position

    #: the wait in line of the spawn under way (see _start_reserving)
    _line_wait: LineWait | None = None

    def wait_over(self, outcome: str) -> None:
        """The spawn's wait for a unit ended ("unit" or "refused"): log it against its estimate."""
        wait, self._line_wait = self._line_wait, None
        if wait is not None:
            wait.over(outcome)

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
        """Environment for the unit: void devices for CPU-only, limits on shared slots."""
        if unit is None:
            return {"NVIDIA_VISIBLE_DEVICES": "void", "GPUHUB_GPU_UNIT": ""}
        env = {"GPUHUB_GPU_UNIT": unit.id, "GPUHUB_GPU_KIND": unit.kind}
        if unit.shared:
            env.update(self.shared_slot_env(unit.slots, unit.memory_mb * unit.slots))
        elif not unit.memory_isolated:
            env.update(self.compute_instance_env(unit.mig_profile, unit.memory_mb))
        return env

    def compute_instance_env(self, profile: str, memory_mb: int) -> dict[str, str]:
        """A compute-instance MIG unit (``1c.3g.40gb``) shares its GPU instance's memory with the
        other compute instances there: the framework hints for its share (MPS does not run on MIG)."""
        if not self.gpu_memory_hints:
            return {}
        sharers = memory_sharers(profile)
        return mps.hint_env(sharers, mps.hint_limits(memory_mb, sharers) if memory_mb else None)

    # ---- shared slots: MPS where its daemon runs, framework hints always (core/mps.py) ----

    #: the limits of the MPS daemon this server is a client of (set by prepare_shared_slot)
    gpu_mps_limits: mps.SlotLimits | None = None
    gpu_mps_gpu: str = ""

    def shared_slot_env(self, slots: int, gpu_memory_mb: int) -> dict[str, str]:
        """A shared slot's environment: the hints (unless turned off), and the MPS client's."""
        limits = self.gpu_mps_limits
        env = {"GPUHUB_GPU_SHARED": "1"}
        if self.gpu_memory_hints:
            env.update(mps.hint_env(slots, limits or mps.hint_limits(gpu_memory_mb, slots)))
        if limits is not None:
            env.update(mps.client_env(limits))
        return env

    def shared_slot_mounts(self) -> list[Mount]:
        """An MPS client's mounts (its GPU's pipe directory and /dev/shm); none otherwise."""
        if self.gpu_mps_limits is None:
            return []
        return [Mount(m["Target"], m["Source"], type=m["Type"], no_copy=m["NoCopy"])
                for m in mps.client_mounts(self.gpu_mps_gpu)]

    def use_mps(self, gpu_uuid: str, limits: mps.SlotLimits | None) -> None:
        """Wire this server to ``gpu_uuid``'s MPS daemon (``limits``: the daemon's), or refuse
        where the hub says shared slots are MPS-limited and the GPU has no daemon."""
        self.gpu_mps_limits, self.gpu_mps_gpu = limits, gpu_uuid if limits is not None else ""
        if limits is None and self.gpu_shared_limit == mps.ENFORCE_MPS:
            self.log.error("%s: shared GPU %s has no running MPS daemon: refused", self._log_name, gpu_uuid)
            raise spawn_error(
                "Shared GPU slots here are limited by MPS, but the MPS service of the GPU you were given is "
                "not running, so your server was not started. Try again later, or start a CPU-only server; "
                "the hub's admin can start it with `gpuhub node setup --mps`.",
                "gpu-unavailable",
            )
        if limits is not None:
            self.log.info("%s: MPS client of %s (%s)", self._log_name, gpu_uuid, limits.label())

    async def prepare_shared_slot(self, unit: Unit) -> None:
        """Before the container is made: a shared slot becomes its GPU's MPS client where the
        daemon container (``gpuhub node setup --mps``) runs on this engine, or is refused (see
        :meth:`use_mps`); other units get no MPS."""
        if not unit.shared:
            self.gpu_mps_limits, self.gpu_mps_gpu = None, ""
            return
        try:
            daemon = await self.docker("inspect_container", mps.daemon_name(unit.gpu_uuid))
        except APIError as e:
            if e.status_code != 404:
                raise self._engine_error(e) from None
            daemon = None
        self.use_mps(unit.gpu_uuid, mps.daemon_limits(daemon, unit.gpu_uuid, unit.slots))

    def shared_limit_notes(self, memory_by_pool: Mapping[str, int] | None = None) -> dict[str, str]:
        """What the form says of each shared pool's GPU limit (``memory_by_pool``: a GPU's MiB)."""
        notes = {}
        for pool, units in self.gpu_inventory_resolved.pools.items():
            shared = [u for u in units if u.shared]
            if shared:
                slots, memory = shared[0].slots, (memory_by_pool or {}).get(pool, shared[0].memory_mb * shared[0].slots)
                notes[pool] = mps.limit_note(self.gpu_shared_limit, mps.hint_limits(memory, slots))
        return notes

    # ---- shared by both spawners ------------------------------------------------------

    def resource_limits(self) -> isolation.Limits:
        """This server's limits, as admitted (see :func:`admission.server_limits`)."""
        choice = self.gpu_choice
        if choice is not None and choice.limits is not None:
            return choice.limits
        profile = choice.profile if choice is not None else self._profile_by_slug(self.gpu_profile_slug)
        return admission.server_limits(profile, choice.policy if choice is not None else None, self.default_limits())

    def default_limits(self) -> isolation.Limits:
        return isolation.Limits(isolation.parse_memory(self.default_mem_limit), self.default_cpu_limit, self.pids_limit)

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
        self.gpu_mps_limits, self.gpu_mps_gpu = None, ""
        self.gpu_unit_id = ""
        self.gpu_profile_slug = ""
        self.gpu_choice = None

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
