"""``GPUDockerSpawner``: DockerSpawner that gives each server one GPU unit on a single host."""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlparse

import docker
from docker.errors import APIError, ImageNotFound
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import TraitError, default, validate

from gpuhub_spawner.core import mps
from gpuhub_spawner.core.volumes import build_mounts
from gpuhub_spawner.hub import docker_create
from gpuhub_spawner.hub.allocator import HeldRecord, NoUnitFree, OverLimit, StillHeld
from gpuhub_spawner.hub.docker_create import WithGPU
from gpuhub_spawner.hub.mixin import (
    LABEL_UNIT,
    GPUSpawnerMixin,
    ServerLabels,
    spawn_error,
)


def image_missing_error(image: str, log_name: str, why: str) -> Exception:
    """The user's message for an image that is not on the host and could not be pulled."""
    return spawn_error(
        f"The server image '{image}' is not on this machine and could not be pulled. Tell the "
        "hub's admin: build it with images/build.sh, or pull it onto the host beforehand "
        f"(docker pull {image}).",
        "image-missing",
        log_message=f"image {image} unavailable for {log_name}: {why}",
    )


class GPUDockerSpawner(GPUSpawnerMixin, DockerSpawner):
    """DockerSpawner that gives each server one GPU unit (or none, for CPU-only profiles).

    The unit goes to the container as ``DeviceRequest(device_ids=[uuid])`` and into its
    labels (see :mod:`~gpuhub_spawner.hub.docker_create`, through DockerSpawner's
    ``extra_create_kwargs`` and ``extra_host_config``); the labels on the engine are the truth
    about who holds what.
    """

    @default("remove")
    def _default_remove(self) -> bool:
        # the GPU unit is baked into the container: a restart must create a new one
        return True

    @validate("remove")
    def _check_remove(self, proposal: Any) -> bool:
        if not proposal.value:
            raise TraitError(
                "GPUDockerSpawner.remove=False is not supported: a stopped container keeps the GPU "
                "it was given. User files live in named volumes, so leave remove=True."
            )
        return True

    #: the hub's additions to each of DockerSpawner's create extension points (methods below)
    _GPU_ADDITIONS = {"extra_create_kwargs": "gpu_create_kwargs", "extra_host_config": "gpu_host_config"}

    def _with_gpu(self, name: str, configured: Any) -> WithGPU:
        add = getattr(type(self), self._GPU_ADDITIONS[name])
        return configured if isinstance(configured, WithGPU) else WithGPU(configured, add)

    @default("extra_create_kwargs")
    def _default_extra_create_kwargs(self) -> WithGPU:
        return self._with_gpu("extra_create_kwargs", {})

    @default("extra_host_config")
    def _default_extra_host_config(self) -> WithGPU:
        return self._with_gpu("extra_host_config", {})

    @validate("extra_create_kwargs", "extra_host_config")
    def _keep_operator_values(self, proposal: Any) -> WithGPU:
        # what the operator sets is kept; the hub's own settings are merged over it at create
        return self._with_gpu(proposal.trait.name, proposal.value)

    # ---- engine access for the allocator ---------------------------------------------

    def _engine_key(self) -> str:
        # no connection needed: the form must render even when the engine is down
        return str(self.client_kwargs.get("base_url") or os.environ.get("DOCKER_HOST") or "local")

    async def _list_held(self) -> list[HeldRecord]:
        containers = await self.docker("containers", all=True, filters={"label": LABEL_UNIT})
        records = []
        for c in containers:
            labels = ServerLabels.from_labels(c.get("Labels"))
            name = (c.get("Names") or ["/?"])[0].lstrip("/")
            records.append(
                HeldRecord(
                    holder=name,
                    unit_id=labels.unit,
                    state=c.get("State", ""),
                    object_id=c.get("Id", ""),
                    ours=labels.hub == self.gpu_hub_id,
                    user=labels.user,
                    group=labels.group,
                )
            )
        return records

    async def _remove_stale(self, record: HeldRecord) -> None:
        await self.docker("remove_container", record.object_id, force=True)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self):
        """DockerSpawner.start, with engine errors made readable and no unit left behind."""
        self._progress_init()
        try:
            await self.access_checked()
            return await super().start()
        except web.HTTPError:  # our refusals (SpawnException) and dockerspawner's own 400s
            await self._undo_failed_start()
            raise
        except Exception as e:  # noqa: BLE001 - raw engine text never reaches the user
            await self._undo_failed_start()
            raise self._engine_error(e) from None
        except BaseException:
            await self._undo_failed_start()
            raise
        finally:
            self._start_finished()

    async def _undo_failed_start(self) -> None:
        """Remove a half-made container and free its unit (the hub will not call stop).

        A container that cannot be removed keeps its unit: the labels are the truth, and the
        allocator frees the unit when a later read of the engine no longer finds it.
        """
        gone = await self._remove_container(self.object_id or self.object_name)
        if not gone:
            self._remove_later(self.object_id)
        self.object_id = ""
        if self.gpu_unit_id:
            if gone:
                await self.get_allocator().release(self.object_name)
                await self.end_usage(self.object_name)
            else:
                self.log.error("%s could not be removed; its unit %s stays held", self.object_name, self.gpu_unit_id)
            self.gpu_unit_id = ""

    async def _remove_container(self, ref: str) -> bool:
        """Remove ``ref`` by force (a running one is killed); True once the engine has it gone."""
        tries = 1
        try:
            await self.docker("remove_container", ref, v=True, force=True)
            return True
        except APIError as e:
            if e.status_code == 404:
                return True
            if e.status_code == 409:  # a removal already under way: wait a little for it
                tries = 20
            self.log.warning("Could not remove %s: %s", ref, e)
        except Exception as e:  # noqa: BLE001 - reported by the caller; the engine is the truth
            self.log.warning("Could not remove %s: %s", ref, e)
        for _ in range(tries):
            try:
                await self.docker("inspect_container", ref)
            except APIError as e:
                if e.status_code == 404:
                    return True
                return False
            except Exception:  # noqa: BLE001 - the engine is not answering
                return False
            await asyncio.sleep(0.5)
        return False

    #: seconds between further attempts to remove a container whose stop failed
    leftover_retry_delays: tuple[float, ...] = (10, 30, 60, 120, 300, 600)

    def _remove_later(self, ref: str) -> None:
        """Keep trying to remove the leftover container ``ref`` (an id, never a name a new
        server could take); its unit is freed once it is gone."""
        if not ref:
            return

        holder = self.object_name

        async def retry() -> None:
            for delay in self.leftover_retry_delays:
                await asyncio.sleep(delay)
                if await self._remove_container(ref):
                    self.log.info("Removed the leftover container %s of %s", ref[:12], self._log_name)
                    allocator = self.get_allocator()
                    await allocator.resync()  # the labels decide: frees its unit
                    if allocator.unit_of(holder) is None:  # no new server of that name holds one
                        await self.end_usage(holder)
                    return
            self.log.error(
                "The container %s of %s could not be removed; it keeps its GPU unit until an "
                "operator removes it (docker rm -f)",
                ref[:12],
                self._log_name,
            )

        leftovers = self.hub_state.leftovers
        if ref not in leftovers:
            leftovers[ref] = asyncio.ensure_future(retry())
            leftovers[ref].add_done_callback(lambda _task: leftovers.pop(ref, None))

    async def remove_object(self):
        """Remove the container by force; refuse clearly if it is still there (it holds its GPU).

        dockerspawner removes without force and ignores a 409, so a container whose stop failed
        went on running while the hub handed its GPU to someone else.
        """
        ref = self.object_id or self.object_name
        if not await self._remove_container(ref):
            self._remove_later(self.object_id)
            raise self.still_held_error(f"{self._log_name}: container {self.object_name} could not be removed")

    async def create_object(self):
        choice = await self.admitted_choice()
        if not choice.gpu:
            self._emit(30, "Creating your CPU-only server…")
            return await self._create_shielded()
        reservation = await self.reserve_unit(choice)
        try:
            async with reservation as unit:
                self.wait_over("unit")
                self.gpu_unit_id = unit.id
                await self.prepare_shared_slot(unit)  # MPS client, or refused: see mixin.use_mps
                short = unit.device_id[:12]
                self._emit(40, f"Assigned {unit.describe()} ({short}…). Creating your server…")
                obj = await self._create_shielded()
        except (NoUnitFree, OverLimit, StillHeld) as e:
            raise self.reservation_error(e) from None
        except asyncio.CancelledError:  # stopped (or timed out) while in line
            self.wait_over("cancelled")
            raise
        await self.record_usage(unit, self.object_name)
        return obj

    async def _create_shielded(self):
        """Create the container; if the spawn is cancelled meanwhile, still learn its id.

        ``docker create`` runs in a thread and finishes even when the spawn is cancelled
        (start_timeout); the id is kept so the failed-start cleanup removes that container.
        """
        task = asyncio.ensure_future(super().create_object())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                obj = await task
                self.object_id = obj[self.object_id_key]
            except Exception:  # noqa: BLE001 - the create failed: nothing to clean up
                pass
            raise

    async def pull_image(self, image: str):
        """DockerSpawner's pull (by ``pull_policy``), told in the progress stream before it runs
        (large images take minutes) and after; a failed pull is one clear message (before any
        unit is reserved: nothing is held)."""
        policy = self.pull_policy.lower()
        if policy == "skip" or (policy != "always" and await self._image_present(image)):
            return None
        if policy == "never":
            raise image_missing_error(image, self._log_name, "pull_policy is 'never'")
        self._emit(5, f"Pulling image {image} onto the host… (large images take minutes)")
        try:
            await super().pull_image(image)
        except (APIError, ImageNotFound) as e:
            raise image_missing_error(image, self._log_name, str(e)) from None
        self._emit(8, f"Pulled image {image}.")
        return None

    async def _image_present(self, image: str) -> bool:
        try:
            await self.docker("inspect_image", image)
        except ImageNotFound:
            return False
        return True

    async def start_object(self):
        self._emit(60, "Starting your server…")
        await super().start_object()
        self._emit(80, "Waiting for JupyterLab to answer…")

    async def get_url(self) -> str:
        """Where the server really listens: asked by a restarted hub about a spawn it lost.

        A hub killed mid-spawn never recorded the server's address; the container knows it.
        """
        try:
            ip, port = await self.get_ip_and_port()
        except Exception as e:  # noqa: BLE001 - fall back to what the hub recorded
            self.log.warning("Could not read the address of %s: %s", self._log_name, e)
            return await super().get_url()
        if ":" in ip:
            ip = f"[{ip}]"
        scheme = urlparse(self.server.url).scheme or "http"
        return f"{scheme}://{ip}:{port}{self.server.base_url}"

    async def poll(self):
        try:
            status = await super().poll()
        except Exception as e:  # noqa: BLE001 - unknown is not stopped: keep the unit
            self.log.warning(
                "Could not ask the engine about %s (%s); reporting it running and keeping its GPU unit",
                self._log_name,
                e,
            )
            return None
        busy = self._spawn_pending or self._start_pending
        if status is not None and self.gpu_unit_id and not busy:
            # the container exited (or the engine says it is gone): it no longer uses the GPU
            await self.get_allocator().release(self.object_name)
            await self.end_usage(self.object_name)
        elif status is None and not busy:
            self._seen_running()
            if not self.gpu_unit_id:
                await self._adopt_from_labels()
        return status

    async def _adopt_from_labels(self) -> None:
        try:
            obj = await self.get_object()
            if obj is not None:
                await self.adopt_unit((obj.get("Config") or {}).get("Labels") or {})
        except Exception as e:  # noqa: BLE001 - the next poll tries again
            self.log.warning("Could not read the labels of %s: %s", self._log_name, e)

    async def stop(self, now: bool = False):
        try:
            await super().stop(now=now)
        except web.HTTPError:
            raise  # remove_object's clear refusal: the container and its unit are still there
        except Exception as e:  # noqa: BLE001 - e.g. the stop timed out: remove it by force
            self.log.warning("Stopping %s failed (%s); removing it by force", self._log_name, e)
            ref = self.object_id or self.object_name
            if not await self._remove_container(ref):
                # it still runs with its GPU: the unit stays held until the engine has it gone
                self._remove_later(self.object_id)
                raise self._engine_error(e, doing="stop") from None
            self.object_id = ""
            self.clear_state()
        await self.get_allocator().release(self.object_name)
        await self.end_usage(self.object_name)
        self.gpu_unit_id = ""

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.gpu_env(self.gpu_unit))
        # the image's start script finds the tutorials and the editable copy here
        env["GPUHUB_TUTORIALS_STORE"] = self.tutorials_mount_path
        env["GPUHUB_TUTORIALS_COPY_DIR"] = self.tutorials_copy_mount_path
        return env

    async def gpu_units_at_once(self) -> tuple[int, int]:
        """The allocator's count: units held or reserved, and spawns in line, of the user's other
        servers (read from the engine's labels at start, so a restarted hub counts them too)."""
        await self.sync_allocations()
        held, waiting = self.get_allocator().owner_counts(self.user.name, exclude=self.object_name)
        spawners_held, _ = await super().gpu_units_at_once()
        return max(held, spawners_held), waiting

    # ---- the container: DockerSpawner's extension points -------------------------------

    def gpu_create_kwargs(self, configured: dict[str, Any]) -> dict[str, Any]:
        """``extra_create_kwargs`` additions: the labels (the engine's record of who holds what)."""
        labels = docker_create.server_labels(
            self.gpu_hub_id, self.user.name, self.name or "", self.gpu_profile_slug, self.gpu_unit,
            self.gpu_share_group if self.gpu_unit is not None else "",
        )
        added = {"labels": {**(configured.get("labels") or {}), **docker_create.literal(labels)}}
        if self.gpu_mps_limits is not None:
            added["user"] = str(mps.CLIENT_UID)  # the uid of the GPU's one MPS server (core/mps.py)
        return added

    def gpu_host_config(self, configured: dict[str, Any]) -> dict[str, Any]:
        """``extra_host_config`` additions: the unit, limits, volumes, no-new-privileges."""
        if self.mem_limit is not None:  # upstream's own mem_limit / cpu_limit are set already
            configured = {"mem_limit": self.mem_limit, **configured}
        if self.cpu_limit is not None:
            configured = {"cpu_quota": self.cpu_limit, **configured}
        return docker_create.host_config_additions(
            configured, self.gpu_unit, self.resource_limits(), self.mount_binds,
            build_mounts(self.volume_plan()) + self.shared_slot_mounts(),
        )


__all__ = ["GPUDockerSpawner", "GPUSpawnerMixin", "docker"]
