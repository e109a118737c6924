"""The swarm spawner's side of storage that follows users (the decision is in
:mod:`gpuhub_spawner.core.home_node`).

Where a user's volumes are (their *home node*) is read from the swarm while another of their
servers runs there (its task's node), and is otherwise the node their last server ran on, kept in
the spawner's state (JupyterHub's database), so a restarted hub still knows it.  Stopping a server
keeps it (``clear_state`` does not forget it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from traitlets import Bool, Dict
from traitlets.config import LoggingConfigurable

from gpuhub_spawner.core import home_node
from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.home_node import NFS, Placement
from gpuhub_spawner.core.inventory import pool_label
from gpuhub_spawner.hub.errors import spawn_error
from gpuhub_spawner.hub.fairline import NoUnitFree

#: spawner state keys
STATE_NODE = "gpu_home_node"
STATE_AT = "gpu_home_at"


class FollowingStorage(LoggingConfigurable):
    """Mixed into :class:`~gpuhub_spawner.hub.swarmspawner.GPUSwarmSpawner` (before the GPU mixin)."""

    gpu_follow_home_node = Bool(
        True,
        config=True,
        help="""Place a user's next server on the node holding their ~/scratch and ~/my-tutorials
        volumes (node-local volumes), and ask them before starting elsewhere when that node cannot
        serve the profile.  Not needed (and not used) with ``gpu_storage_nfs``.""",
    )
    gpu_storage_nfs = Dict(
        {},
        config=True,
        help="""NFS for the users' volumes (``storage.nfs`` of gpuhub.yaml): ``server``,
        ``export_root`` (one directory per user below it, made by the admin), ``options``.  The
        volumes are made with Docker's local driver NFS options and follow users to every node.
        Empty: node-local volumes.""",
    )

    #: the node holding this user's volumes (as this server last knew it), and since when
    gpu_home_node: str = ""
    gpu_home_at: float = 0.0
    #: where this spawn goes (set by the admission)
    gpu_placement: Placement | None = None

    # ---- what is known ----------------------------------------------------------------

    @property
    def storage_nfs(self) -> NFS | None:
        cfg = self.gpu_storage_nfs
        if not cfg:
            return None
        return NFS(str(cfg["server"]), str(cfg["export_root"]), str(cfg.get("options") or "nfsvers=4.1"))

    @property
    def volumes_per_node(self) -> bool:
        """The user's volumes live on one node (no NFS, and some are configured)."""
        return (
            self.gpu_follow_home_node and self.storage_nfs is None
            and bool(self.scratch_volume_name or self.tutorials_copy_volume_name)
        )

    def _volume_paths(self) -> list[str]:
        return [p for v, p in ((self.scratch_volume_name, self.scratch_mount_path),
                               (self.tutorials_copy_volume_name, self.tutorials_copy_mount_path)) if v]

    def home_of_user(self, view: ClusterView) -> str:
        """The node holding the user's volumes: where another server of theirs runs now, else
        the newest recorded by any of their servers ("" when none ever ran)."""
        for name, labels in view.labels.items():
            placed = view.placements.get(name)
            if labels.user == self.user.name and name != self.object_name and placed and placed.node_id in view.nodes:
                return view.nodes[placed.node_id].hostname
        known = [(self.gpu_home_at, self.gpu_home_node)]
        for spawner in getattr(self.user, "spawners", {}).values():
            known.append((getattr(spawner, "gpu_home_at", 0.0), getattr(spawner, "gpu_home_node", "")))
        for orm in (getattr(self.user, "orm_spawners", None) or {}).values():
            state = getattr(orm, "state", None) or {}
            known.append((float(state.get(STATE_AT) or 0.0), str(state.get(STATE_NODE) or "")))
        return max((k for k in known if k[1]), default=(0.0, ""))[1]

    async def remember_home_of(self, task: Mapping[str, Any]) -> None:
        """The server's ``task`` runs: the user's volumes are (now also) on its node."""
        node_id = task.get("NodeID", "")
        view = self._gate().view
        if view is None or node_id not in view.nodes:
            view = await self.cluster_view(max_age=0.0)
        if node_id in view.nodes:
            self.remember_home(view.nodes[node_id].hostname)

    def remember_home(self, hostname: str) -> None:
        if self.volumes_per_node and hostname:
            if hostname != self.gpu_home_node:
                self.log.info("%s: the user's volumes are on node %s now", self._log_name, hostname)
            self.gpu_home_node, self.gpu_home_at = hostname, time.time()

    # ---- the decision, in the admission ---------------------------------------------

    async def admit(self, user_options: Any):
        self.gpu_placement = None
        options = user_options if isinstance(user_options, Mapping) else {}
        try:
            wanted = home_node.parse_placement(options.get("placement"))
        except home_node.PlacementError as e:
            raise spawn_error(str(e), "bad-profile") from None
        choice = await super().admit(user_options)
        if self.volumes_per_node:
            view = self._gate().view or ClusterView()
            home = self.home_of_user(view)
            self.gpu_placement = home_node.decide(home, view, choice.profile.pool, wanted, self._volume_paths())
            self.log.info("%s: the user's volumes are on %r: %s", self._log_name, home, self.gpu_placement.action)
            if self.gpu_placement.action == home_node.ASK:
                message = self.gpu_placement.message
                raise spawn_error(message, "gpu-unavailable", log_message=f"{self._log_name}: {message}")
        return choice

    def placement_line(self, pool: str) -> str:
        """The fair line this spawn waits in (the home node's own, when placed there)."""
        return self.gpu_placement.line_key(pool) if self.gpu_placement is not None else pool

    def reserving_at_home(self, pool: str):
        """For a spawn placed on the home node: say so; the callback that streams its place in
        that node's line.  None otherwise."""
        placed = self.gpu_placement
        if placed is None or not placed.constraints:
            return None
        label, node = pool_label(pool), placed.node
        self._line_wait = None  # one node's line: the pool's holds do not tell its wait
        self._emit(10, f"Reserving a {label} on node {node}, where your files are…")
        started = time.monotonic()

        def on_position(position: int, total: int) -> None:
            self._emit(15, (
                f"Node {node} has no free {label}: you are #{position} of {total} in line for {node} "
                f"(waited {int(time.monotonic() - started)}s, at most {int(self.gpu_queue_max_wait)}s). "
                "Or cancel and start on another node with an empty scratch."
            ))

        return on_position

    def home_wait_error(self, err: Exception) -> Exception | None:
        """The user's message for a wait in the home node's line that ran out; None for others."""
        pool, node = home_node.split_line_key(getattr(err, "pool", ""))
        if not isinstance(err, NoUnitFree) or not node:
            return None
        return spawn_error(
            f"Node {node} had no free {pool_label(pool)} within {int(err.waited)} seconds (you were "
            f"#{err.position or 1} in line for it). Your files stay on {node}: try again later, or start on "
            'another node with an empty scratch ("placement": "anywhere").',
            "gpu-unavailable",
        )

    def placement_constraints(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """``Placement`` arguments: the operator's ``extra_placement_spec`` and the home node."""
        spec = dict(extra)
        placed = self.gpu_placement
        if placed is not None and placed.constraints:
            spec["constraints"] = [*(spec.get("constraints") or []), *placed.constraints]
            self._emit(32, f"Your files are on node {placed.node}: your server starts there.")
        elif placed is not None and placed.message:
            self._emit(32, placed.message)
        return spec

    def storage_mounts(self, mounts: list[Any]) -> list[Any]:
        """The user's volumes, on NFS where configured."""
        return home_node.with_nfs(mounts, self.storage_nfs, self.user.name)

    def home_form(self, view: ClusterView) -> dict[str, Any] | None:
        """What the spawn form says of the user's home node (None: nothing to say)."""
        if not self.volumes_per_node:
            return None
        home = self.home_of_user(view)
        if not home:
            return None
        pools = {p.slug: p.pool for p in self.profiles}
        paths = self._volume_paths()
        return {
            "node": home,
            "files": home_node.files_phrase(paths),
            "empty": home_node.files_phrase(paths[:1]),
            "notes": home_node.form_notes(home, view, pools, paths),
        }

    # ---- state ---------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.gpu_home_node = str(state.get(STATE_NODE) or "")
        self.gpu_home_at = float(state.get(STATE_AT) or 0.0)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.gpu_home_node:
            state[STATE_NODE], state[STATE_AT] = self.gpu_home_node, self.gpu_home_at
        return state

    def clear_state(self) -> None:
        super().clear_state()  # the home node stays: the volumes outlive the server
        self.gpu_placement = None
