"""``GPUSwarmSpawner``: SwarmSpawner that gives each server one GPU unit of a Docker Swarm.

Each server is a swarm service whose task requests one generic resource of its pool's kind
(see :mod:`gpuhub_spawner.core.cluster`); swarm picks the node and the unit, and the hub reads the
assignment back from the task.  The engine is the truth: capacity, holders and free counts are
re-read from the nodes and tasks (no hub-side ledger to drift), so a node that joins is offered
at once and a node that is lost frees its units.  What the hub adds is a fair line in front of
swarm (:mod:`~gpuhub_spawner.hub.swarmgate`): a spawn that cannot be placed is queued (with its
position) or refused at once, instead of a task left pending until the spawn times out.  The
admission (``apply_user_options``) counts the user's services through the same gate, and the
service spec carries the unit's kind, labels and limits from :meth:`GPUSwarmSpawner.service_kwargs`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Mapping
from typing import Any

import requests
from docker.errors import APIError, DockerException, ImageNotFound
from docker.types import ContainerSpec, EndpointSpec, Placement, Resources, RestartPolicy, TaskTemplate
from dockerspawner import SwarmSpawner
from tornado import web
from traitlets import Bool, Float, List, default

from gpuhub_spawner.core import isolation, mps
from gpuhub_spawner.core.cluster import (
    MIG_KIND_PREFIX,
    SHARED_KIND_PREFIX,
    ClusterView,
    assigned_resources,
    read_swarm,
)
from gpuhub_spawner.core.inventory import Inventory, Profile, Unit, pool_label, profiles_from_config
from gpuhub_spawner.core.labels import LABEL_GROUP, LABEL_NODE, LABEL_POOL, LABEL_UNIT
from gpuhub_spawner.core.mig_profiles import memory_isolated, profile_of_kind_suffix
from gpuhub_spawner.core.volumes import build_mounts
from gpuhub_spawner.hub.admission import Choice
from gpuhub_spawner.hub.docker_create import server_labels
from gpuhub_spawner.hub.errors import spawn_error
from gpuhub_spawner.hub.fairline import NoUnitFree, OverLimit
from gpuhub_spawner.hub.home import FollowingStorage
from gpuhub_spawner.hub.mixin import GPUSpawnerMixin
from gpuhub_spawner.hub.progress import pulling_message
from gpuhub_spawner.hub.swarmgate import SwarmGate

#: what a pending task says when no node can take it
_UNPLACEABLE = ("no suitable node", "insufficient resources")


def with_env(env: list[str] | None, additions: Mapping[str, str]) -> list[str]:
    """``env`` (``K=V`` entries, as ContainerSpec keeps them) with ``additions`` set over it."""
    kept = [entry for entry in env or [] if entry.split("=", 1)[0] not in additions]
    return kept + [f"{key}={value}" for key, value in additions.items()]


class GPUSwarmSpawner(FollowingStorage, GPUSpawnerMixin, SwarmSpawner):
    """SwarmSpawner that gives each server one GPU unit (or none, for CPU-only profiles)."""

    swarm_host_ports = Bool(
        True,
        config=True,
        help="""Publish the server's port in host mode on its node and reach it at the node's
        address (swarm's routing mesh needs IPVS).  False: use the service name on the
        network in ``network_name`` (the hub must be attached to that overlay network).""",
    )
    swarm_default_cmd = List(
        ["start-singleuser.sh"],
        config=True,
        help="""The server command when ``cmd`` is unset and the manager lacks the image to read
        it from (on a swarm the image lives on the worker nodes).""",
    )
    swarm_view_max_age = Float(
        1.0, config=True, help="Seconds a read of the swarm's nodes and tasks is reused for forms."
    )

    @default("poll_interval")
    def _default_poll_interval(self) -> int:
        # a lost node must be noticed well within 30 seconds
        return 10

    @default("use_internal_ip")
    def _default_internal_ip(self) -> bool:
        return False

    # ---- the swarm, as read from the manager -----------------------------------------

    def _engine_key(self) -> str:
        return str(self.client_kwargs.get("base_url") or "swarm")

    def _gate(self) -> SwarmGate:
        return self.hub_state.gate(self._engine_key(), SwarmGate)

    async def cluster_view(self, max_age: float | None = None) -> ClusterView:
        async def read() -> ClusterView:
            return await asyncio.wrap_future(self.executor.submit(read_swarm, self.client, self.gpu_hub_id))

        return await self._gate().shared_view(read, self.swarm_view_max_age if max_age is None else max_age)

    @property
    def gpu_inventory_resolved(self) -> Inventory:
        view = self._gate().view
        return view.inventory() if view is not None else Inventory()

    @property
    def profiles(self) -> list[Profile]:
        # pools come and go with nodes: a configured profile may wait for its pool's node
        return profiles_from_config(list(self.gpu_profiles), self.gpu_inventory_resolved, require_pools=False)

    async def sync_allocations(self) -> None:
        await self.cluster_view()

    async def _render_gpu_form(self) -> str:
        from gpuhub_spawner.hub import forms

        try:
            view = await self.cluster_view()
        except Exception as e:  # noqa: BLE001 - show the form even if the manager is down
            self.log.warning("Could not read the swarm for the options form: %s", e)
            view = ClusterView()
        pools = {u.pool for u in view.units}
        gate = self._gate()
        sizes = {pool: view.pool_size(pool) for pool in pools}
        waiting = {pool: gate.queue_length(pool) for pool in pools}
        policy = await self.quota_policy()
        allowed = None if policy.allowed_profiles is None else set(policy.allowed_profiles)
        free = self.free_for_me(view.free_counts(), lambda pool: gate.held_by_group(view, pool))
        return forms.render_options_form(
            self.profiles, free, sizes, waiting, allowed, await self._form_notice(policy),
            template_paths=self.hub_template_paths, **self.image_form_fields(),
            limit_notes=self.shared_limit_notes(), home=self.home_form(view),
        )

    # ---- spawn ------------------------------------------------------------------------

    async def get_command(self):
        if self.cmd:
            return await super().get_command()
        try:
            return await super().get_command()
        except ImageNotFound:
            return list(self.swarm_default_cmd) + self.get_args()

    #: set while JupyterHub cleans up after a start that raised (see poll)
    _start_failed = False

    async def start(self):
        self._progress_init()
        self._start_failed = False
        try:
            await self.access_checked()
            await self.cluster_view(max_age=0.0)
            return await super().start()
        except BaseException as e:
            self._start_failed = True
            await self._undo_failed_start()
            if isinstance(e, Exception) and not isinstance(e, web.HTTPError):
                # raw engine text (a 409 "Conflict", a 500) never reaches the user
                raise self._engine_error(e) from None
            raise
        finally:
            self._start_finished()

    async def _undo_failed_start(self) -> None:
        self._gate().settled(self.object_name)
        self._gate().line.forget(self.object_name)
        try:
            await self.docker("remove_service", self.object_id or self.object_name)
        except APIError as e:
            if e.status_code != 404:
                self.log.warning("Could not remove %s after a failed start: %s", self.object_name, e)
        except Exception as e:  # noqa: BLE001 - best effort; the engine is the truth
            self.log.warning("Could not remove %s after a failed start: %s", self.object_name, e)
        self.object_id = ""
        if self.gpu_unit_id:
            await self.end_usage(self.object_name)
            self.gpu_unit_id = ""
        self._gate().wake()

    async def create_object(self):
        """Create the service as admitted (``gpu_choice``), after the swarm gate lets it through.

        Upstream's ``create_object`` builds the spec from its ``extra_*_spec`` dicts and has no
        place for what the hub adds; this one builds the same spec with them (upstream's order:
        its own values, then the operator's) and the hub's additions over both, then creates it.
        """
        choice = await self.admitted_choice()
        kind = await self._through_the_gate(choice) if choice.gpu else ""
        if not kind:
            self._emit(30, "Creating your CPU-only server…")
        service = await self.docker("create_service", **await self.service_kwargs(choice, kind))
        while not await self.docker("tasks", filters={"service": self.service_name}):
            await asyncio.sleep(0.2)  # start_object follows the task: wait until swarm made it
        return service

    async def _through_the_gate(self, choice: Choice) -> str:
        """Wait for the gate to let a GPU server of ``choice``'s pool through: the kind to request."""
        pool, gate = choice.profile.pool, self._gate()
        line_key = self.placement_line(pool)
        on_position = self.reserving_at_home(pool) or self._start_reserving(
            pool, gate.line, line_key, lambda: gate.pool_counts(pool))
        try:
            kind = await gate.admit(
                line_key, self.object_name, self.cluster_view, self.gpu_queue_max_wait,
                on_position, priority=choice.policy.priority, owner=self.user.name,
                max_units=choice.policy.max_gpu_units, use=self.fair_share_use,  # read only to wait in line
                share=self.pool_share(pool, gate.pool_counts(pool)[1]))
        except (NoUnitFree, OverLimit) as e:
            raise (self.home_wait_error(e) or self.reservation_error(e)) from None
        except asyncio.CancelledError:  # stopped (or timed out) while in line
            self.wait_over("cancelled")
            raise
        self.wait_over("unit")
        self._emit(30, f"A {pool_label(pool)} is free in the swarm. Creating your server…")
        return kind

    async def gpu_units_at_once(self) -> tuple[int, int]:
        """The swarm gate's count: the user's other GPU services live or let through, and spawns in
        line (the gate re-checks them under its lock when the service is let through)."""
        await self.cluster_view(max_age=0.5)
        held, waiting = self._gate().owner_counts(self.user.name, exclude=self.object_name)
        spawners_held, _ = await super().gpu_units_at_once()
        return max(held, spawners_held), waiting

    def _pool_size(self, pool: str) -> int:
        return (self._gate().view or ClusterView()).pool_size(pool)

    def no_unit_error(self, err: NoUnitFree) -> Exception:
        if not self._pool_size(err.pool):
            return spawn_error(
                f"No node of the swarm offers a {pool_label(err.pool)} right now. Start a CPU-only "
                "server, or ask the hub's admin to add or un-cordon a node.",
                "gpu-unavailable",
            )
        return super().no_unit_error(err)

    # ---- the service: upstream's spec, the operator's extra_*_spec, the hub's additions ----

    async def service_kwargs(self, choice: Choice, kind: str) -> dict[str, Any]:
        """``create_service`` arguments: the GPU kind (a generic resource), labels, limits,
        no-new-privileges, no restarts by swarm, the port in host mode."""
        labels = server_labels(self.gpu_hub_id, self.user.name, self.name or "", choice.slug, None)
        self.gpu_mps_limits, self.gpu_shared_memory = None, 0
        if kind.startswith(SHARED_KIND_PREFIX):
            await self.prepare_swarm_slot(kind)
        if kind:
            labels[LABEL_POOL] = choice.profile.pool or ""
            labels.update({LABEL_GROUP: self.gpu_share_group} if self.gpu_share_group else {})
        container = ContainerSpec(**{
            "image": self.image, "env": self.get_env(), "args": await self.get_command(), "mounts": self.mounts,
            **self.extra_container_spec,
        })
        container["Env"] = with_env(container.get("Env"), self.kind_env(kind))
        container["Labels"] = {**(container.get("Labels") or {}), **labels}
        container["Privileges"] = {**(container.get("Privileges") or {}), "NoNewPrivileges": True}
        if self.gpu_mps_limits is not None:
            container["User"] = str(mps.CLIENT_UID)  # the uid of the GPU's one MPS server (core/mps.py)
        resources = Resources(**{
            "mem_limit": self.mem_limit,
            "mem_reservation": self.mem_guarantee,
            "cpu_limit": int(self.cpu_limit * 1e9) if self.cpu_limit else None,
            "cpu_reservation": int(self.cpu_guarantee * 1e9) if self.cpu_guarantee else None,
            **self.extra_resources_spec,
            **({"generic_resources": {kind: 1}} if kind else {}),
        })
        limits = resources.setdefault("Limits", {})
        limits.update(isolation.service_limits(limits, self.resource_limits()))  # memory, CPUs, PIDs
        task = TaskTemplate(**{
            "container_spec": container,
            "resources": resources,
            "networks": [self.network_name] if self.network_name else [],
            "placement": Placement(**self.placement_constraints(self.extra_placement_spec)),
            **self.extra_task_spec,
            # a server is never restarted by swarm elsewhere: its unit and its user's state go with it
            "restart_policy": RestartPolicy(condition="none"),
        })
        extra = self._eval_if_callable(self.extra_create_kwargs)  # a dict or callable, as upstream allows
        extra = dict((await extra if inspect.isawaitable(extra) else extra) or {})
        create = {"task_template": task, "endpoint_spec": self.endpoint_spec(), "name": self.service_name, **extra}
        create["labels"] = {**(create.get("labels") or {}), **labels}
        return create

    def endpoint_spec(self) -> EndpointSpec:
        if self.use_internal_ip:
            return EndpointSpec(**self.extra_endpoint_spec)
        if self.swarm_host_ports:
            # no PublishedPort: the node picks a free one, reported in the task's PortStatus
            return EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": self.port, "PublishMode": "host"}])
        return EndpointSpec(**{"ports": {None: (self.port, "tcp")}, **self.extra_endpoint_spec})

    @property
    def mounts(self):
        # named volumes as volumes (upstream mounts everything as a bind)
        return list(super().mounts) + self.storage_mounts(build_mounts(self.volume_plan())) + self.shared_slot_mounts()

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["GPUHUB_TUTORIALS_STORE"] = self.tutorials_mount_path
        env["GPUHUB_TUTORIALS_COPY_DIR"] = self.tutorials_copy_mount_path
        return env

    def kind_env(self, kind: str) -> dict[str, str]:
        """Environment for the generic-resource ``kind`` requested ("": a CPU-only server)."""
        if not kind:
            return self.gpu_env(None)
        # fail closed: a named kind's device comes only from a runtime that maps swarm-resource
        # (DOCKER_RESOURCE_<kind>); one that ignores it (toolkit 1.18.0-1.18.2, jit-cdi) gives
        # no GPU ("void"; never "none", which 1.18.0/1.18.1 read as all), not the image's "all"
        # (node/toolkit.py).  Shared slots name their GPU below.
        env = {"GPUHUB_GPU_KIND": kind, "NVIDIA_VISIBLE_DEVICES": "void"}
        if kind.startswith(SHARED_KIND_PREFIX):
            view = self._gate().view
            env["NVIDIA_VISIBLE_DEVICES"] = view.shared[kind][0] if view is not None and kind in view.shared else ""
            slots = view.shared[kind][2] if view is not None and kind in view.shared else 0
            env.update(self.shared_slot_env(slots, self.gpu_shared_memory))
        elif kind.startswith(MIG_KIND_PREFIX):
            profile = profile_of_kind_suffix(kind.removeprefix(MIG_KIND_PREFIX))
            if not memory_isolated(profile):
                env.update(self.compute_instance_env(profile, 0))  # node memory unknown: fractions only
        return env

    #: the shared GPU's memory, from its node's labels (set by prepare_swarm_slot)
    gpu_shared_memory: int = 0

    async def prepare_swarm_slot(self, kind: str) -> None:
        """A shared kind's GPU memory (for the hints) and MPS limits, from the engine labels its
        node publishes (``gpuhub node setup``); an MPS client where they name a daemon, else
        refused where the hub says shared slots are MPS-limited (:meth:`use_mps`)."""
        view = self._gate().view
        gpu, node_id, slots, _ = view.shared.get(kind, ("", "", 0, 0)) if view is not None else ("", "", 0, 0)
        labels: dict[str, str] = {}
        if node_id:
            try:
                node = await self.docker("inspect_node", node_id)
            except APIError as e:
                raise self._engine_error(e) from None
            labels = ((node.get("Description") or {}).get("Engine") or {}).get("Labels") or {}
        shared = mps.read_node_labels(labels, kind, slots)
        self.gpu_shared_memory = shared.gpu_memory_mb
        self.use_mps(gpu, shared.mps)

    # ---- waiting for the task --------------------------------------------------------

    async def start_object(self):
        """Follow the task until it runs; say at once why it cannot, never wait silently."""
        self._emit(50, "Waiting for the swarm to place your server…")
        dt = 0.2
        noted: set[str] = set()
        grace_until: float | None = None
        while True:
            task = await self._current_task()
            if not task:
                raise spawn_error("Your server's swarm service vanished while starting. Please try again.",
                                  "engine-unavailable")
            status = task.get("Status") or {}
            state = status.get("State", "").lower()
            message = status.get("Err") or status.get("Message") or ""
            if assigned_resources(task) and "unit" not in noted:
                noted.add("unit")
                await self._note_assignment(task)
            if state == "running":
                break
            if state == "pending" and any(s in message for s in _UNPLACEABLE):
                # a unit freed a moment ago may still be held by a task swarm is shutting down:
                # a user who may wait in line waits a little for it, others are told at once
                if grace_until is None:
                    grace_until = time.monotonic() + min(self.gpu_queue_max_wait, 30.0)
                if time.monotonic() < grace_until:
                    if "grace" not in noted:
                        noted.add("grace")
                        self._emit(55, "The swarm is still releasing a GPU; waiting for it…")
                    await asyncio.sleep(0.5)
                    continue
                raise spawn_error(
                    f"The swarm cannot place your server: {message}. Try again later, or start a "
                    "CPU-only server.",
                    "gpu-unavailable",
                    log_message=f"{self._log_name}: task pending: {message}",
                )
            if state in {"rejected", "failed", "shutdown", "complete", "orphaned", "remove"}:
                raise await self._task_failed(task, state, message)
            if state not in noted and state in {"assigned", "preparing", "starting"}:
                noted.add(state)
                self._emit(60 if state == "assigned" else 70, await self._task_step(task, state))
            elif state == "preparing":
                self._still_pulling(self.image, await self._node_name(task.get("NodeID", "")))
            await asyncio.sleep(dt)
            dt = min(dt * 1.5, 1.5)
        await self.remember_home_of(task)
        self._emit(80, "Waiting for JupyterLab to answer…")

    async def _task_step(self, task: dict[str, Any], state: str) -> str:
        """The user's line for a task's step; "preparing" is when the node pulls the image."""
        if state == "preparing":
            return pulling_message(self.image, await self._node_name(task.get("NodeID", "")))
        return {"assigned": "Placed on a node; preparing…", "starting": "Starting your server…"}[state]

    async def _task_failed(self, task: dict[str, Any], state: str, message: str) -> Exception:
        """The user's message for a task that ended before running (an image the node could not
        get says what the admin can do)."""
        node = await self._node_name(task.get("NodeID", ""))
        log_message = f"{self._log_name}: task {state} on {node}: {message}"
        if "No such image" in message or "image" in message.lower():
            return spawn_error(
                f"Your server could not start on node {node}: the node lacks the server image "
                f"'{self.image}' and could not pull it. "
                "Tell the hub's admin: run `gpuhub node prepull` before the workshop, or push the "
                "image to a registry the nodes can reach.",
                "image-missing",
                log_message=log_message,
            )
        return spawn_error(
            f"Your server could not start on node {node}: {message or state}.", "engine-unavailable",
            log_message=log_message,
        )

    async def _current_task(self) -> dict[str, Any] | None:
        """The service's task in one call (upstream's get_task inspects the service first)."""
        tasks = await self.docker("tasks", filters={"service": self.object_name})
        if not tasks:
            return None
        running = [t for t in tasks if t.get("DesiredState") == "running"]
        return max(running or tasks, key=lambda t: t.get("CreatedAt", ""))

    async def _note_assignment(self, task: dict[str, Any]) -> None:
        """Read which unit swarm gave the task; record it in state, labels and the usage ledger."""
        view = await self.cluster_view()
        if task.get("NodeID", "") not in view.nodes or not self._assigned_unit(view, task):
            view = await self.cluster_view(max_age=0.0)  # a node (or unit) newer than our last read
        node = view.nodes.get(task.get("NodeID", ""))
        unit = None
        for entry in assigned_resources(task):
            named = entry.get("NamedResourceSpec")
            if named:
                unit = view.unit(named.get("Value", ""))
            elif entry.get("DiscreteResourceSpec", {}).get("Kind", "").startswith(SHARED_KIND_PREFIX):
                unit = self._shared_slot(view, entry["DiscreteResourceSpec"]["Kind"])
        if unit is None:
            self.log.warning("%s: unknown assignment %s", self._log_name, assigned_resources(task))
            return
        self.gpu_unit_id = unit.id
        where = node.hostname if node else "?"
        self._emit(65, f"Assigned {unit.describe()} ({unit.device_id[:12]}…) on node {where}.")
        await self.record_usage(unit, self.object_name)
        try:
            await self._label_service({LABEL_UNIT: unit.id, LABEL_NODE: where})
        except Exception as e:  # noqa: BLE001 - the label is a convenience; state has the unit
            self.log.warning("Could not label %s with its unit: %s", self.object_name, e)

    async def _label_service(self, labels: dict[str, str]) -> None:
        """Add service-level labels, sending back the rest of the spec exactly as it is.

        Only the service's own labels change, so swarm keeps the running task.  Every part of
        the spec is passed as read: ``fetch_current_spec=True`` would re-read it with the
        engine's defaults filled in, and a task template that differs restarts the task.
        """
        api = self.client

        def update() -> None:
            current = api.inspect_service(self.object_id)
            spec = current["Spec"]
            api.update_service(
                self.object_id,
                current["Version"]["Index"],
                task_template=spec.get("TaskTemplate"),
                name=spec.get("Name"),
                labels={**(spec.get("Labels") or {}), **labels},
                mode=spec.get("Mode"),
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
                endpoint_spec=spec.get("EndpointSpec"),
            )

        await asyncio.wrap_future(self.executor.submit(update))

    @staticmethod
    def _assigned_unit(view: ClusterView, task: dict[str, Any]) -> bool:
        for entry in assigned_resources(task):
            named = entry.get("NamedResourceSpec")
            if named and view.unit(named.get("Value", "")) is None:
                return False
            kind = (entry.get("DiscreteResourceSpec") or {}).get("Kind", "")
            if kind.startswith(SHARED_KIND_PREFIX) and kind not in view.shared:
                return False
        return True

    def _shared_slot(self, view: ClusterView, kind: str) -> Unit | None:
        """A free slot number of the shared GPU swarm gave us (swarm counts slots, we name them)."""
        gpu, _node, slots, _taken = view.shared.get(kind, ("", "", 0, 0))
        gate = self._gate()
        used = {unit for name, unit in gate.service_units.items() if name != self.object_name}
        for k in range(slots):
            unit_id = f"{gpu}/slot-{k}"
            if unit_id not in used:
                gate.service_units[self.object_name] = unit_id
                return view.unit(unit_id)
        return None

    async def _node_name(self, node_id: str) -> str:
        view = self._gate().view
        if view is not None and node_id in view.nodes:
            return view.nodes[node_id].hostname
        return node_id[:12] or "?"

    async def get_ip_and_port(self):
        if self.use_internal_ip:
            # the task's own address on the shared network: the service name's virtual IP answers
            # only where IPVS runs, and swarm's DNS (tasks.<service>) may still list the task of an
            # earlier service of the same name; the task's address is right everywhere
            task = await self.get_task() or {}
            for attached in task.get("NetworksAttachments") or []:
                if attached.get("Network", {}).get("Spec", {}).get("Name") == self.network_name:
                    return attached["Addresses"][0].split("/")[0], self.port
            raise RuntimeError(f"{self.object_name}: its task has no address on {self.network_name} yet")
        if not self.swarm_host_ports:
            return await super().get_ip_and_port()
        task = await self.get_task()
        if not task:
            raise RuntimeError(f"no task for {self.object_name}")
        for port in (task.get("Status") or {}).get("PortStatus", {}).get("Ports", []) or []:
            if port.get("TargetPort") == self.port and port.get("PublishedPort"):
                node = await self.docker("inspect_node", task["NodeID"])
                return node["Status"]["Addr"], port["PublishedPort"]
        raise RuntimeError(f"{self.object_name}: its task publishes no port {self.port} yet")

    # ---- running servers -------------------------------------------------------------

    async def poll(self):
        if self._start_failed and self._stop_pending:
            # JupyterHub is stopping a server whose start raised (its refusal or failure is the
            # spawn's outcome): a Start request that has not answered yet polls here when its
            # slow_spawn_timeout passes during that cleanup, and "stopped" would turn its answer
            # into a bare 500 instead of a 202 whose progress stream gives the reason
            return None
        try:
            status = await self._poll_service()
        except Exception as e:  # noqa: BLE001 - unknown is not stopped: keep the server and its unit
            self.log.warning("Could not ask the swarm about %s (%s); reporting it running", self._log_name, e)
            return None
        if status is not None and not (self._spawn_pending or self._start_pending) and self.object_id:
            # JupyterHub does not call stop() for a server that poll() reports gone: clean up here
            await self._forget_service()
        elif status is None and not (self._spawn_pending or self._start_pending):
            self._seen_running()
        return status

    async def _poll_service(self):
        status = await super().poll()
        if status is not None:
            return status
        task = await self.get_task()
        if task and task.get("NodeID"):
            try:
                node = await self.docker("inspect_node", task["NodeID"])
            except APIError as e:
                if e.status_code == 404:
                    return "its node has left the swarm"
                raise
            state = (node.get("Status") or {}).get("State")
            if state in {"down", "disconnected"}:
                host = (node.get("Description") or {}).get("Hostname", task["NodeID"][:12])
                self.log.warning("%s: node %s is %s; reporting the server stopped", self._log_name, host, state)
                return f"node {host} is {state}"
        return None

    async def _forget_service(self) -> None:
        """Remove the service and close its usage interval: its unit is free again."""
        try:
            await self.docker("remove_service", self.object_id)
        except APIError as e:
            if e.status_code != 404:
                self.log.warning("Could not remove %s: %s", self.object_name, e)
        await self._released()

    async def _released(self) -> None:
        gate = self._gate()
        gate.settled(self.object_name)
        gate.service_units.pop(self.object_name, None)
        gate.line.forget(self.object_name)
        await self.end_usage(self.object_name)
        self.gpu_unit_id = ""
        gate.view_time = 0.0
        gate.wake()

    async def stop(self, now: bool = False):
        try:
            await super().stop(now=now)
        except APIError as e:
            if e.status_code != 404:
                # the service (and the unit swarm gave it) is still there: say so plainly
                raise self._engine_error(e, doing="stop") from None
        except (DockerException, requests.RequestException) as e:
            raise self._engine_error(e, doing="stop") from None
        await self._released()


__all__ = ["GPUSwarmSpawner", "SwarmGate"]
