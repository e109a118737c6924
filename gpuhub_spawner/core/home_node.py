"""Storage that follows users across a swarm's nodes (pure: decides, touches nothing).

Without shared storage a user's ``~/scratch`` and ``~/my-tutorials`` are named volumes local to
the node their server ran on: their *home node*.  A server started elsewhere finds them empty,
and the user thinks their files are lost.  So the hub places the next server on the home node
whenever that node can serve the profile chosen, and when it cannot (no free unit of the
profile's pool there, the node drained or gone) it says so before anything starts and lets the
user choose: wait in line for the home node (``placement: wait``), or start on another node with
an empty scratch (``placement: anywhere``; the old files stay where they are, and the home moves).

Where the operator provides NFS (``storage.nfs`` in ``gpuhub.yaml``) the volumes are created with
Docker's ``local`` driver NFS options (:func:`nfs_volume_options`): they follow users to every
node, and no placement is needed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpuhub_spawner.core.cluster import ClusterView, kind_of_pool
from gpuhub_spawner.core.inventory import POOL_SHARED, pool_label

#: ``user_options["placement"]`` values
WAIT = "wait"
ANYWHERE = "anywhere"
PLACEMENTS = ("", WAIT, ANYWHERE)

#: what :func:`decide` tells the spawner to do
PLACE_HOME = "home"  # constrain the server to the home node
ASK = "ask"  # refuse now, with the message and the choice
FREE = "anywhere"  # no constraint


@dataclass(frozen=True)
class Placement:
    """The decision: ``action``, the ``node`` (hostname) it concerns, and the user's message
    (for :data:`ASK`; for a move, the line the progress shows)."""

    action: str
    node: str = ""
    message: str = ""
    #: :data:`ASK` only: waiting for the node can help (it offers the profile, it takes servers)
    can_wait: bool = False

    @property
    def constraints(self) -> list[str]:
        """Swarm placement constraints for this decision."""
        return [f"node.hostname=={self.node}"] if self.action == PLACE_HOME and self.node else []

    def line_key(self, pool: str) -> str:
        """The fair line this spawn waits in: the pool's, or the pool's on the home node."""
        return f"{pool}@{self.node}" if self.action == PLACE_HOME and self.node else pool


class PlacementError(ValueError):
    """``user_options["placement"]`` is not one of :data:`PLACEMENTS`; ``str()`` is for the user."""


def parse_placement(value: Any) -> str:
    """The user's placement choice ("" when none was given)."""
    if value is None:
        return ""
    if not isinstance(value, str) or value not in PLACEMENTS:
        raise PlacementError(
            f"'placement' must be \"wait\" (wait in line for the node holding your files) or "
            f"\"anywhere\" (start on another node with an empty scratch), not {str(value)[:40]!r}."
        )
    return value


def split_line_key(key: str) -> tuple[str, str]:
    """``mig-1g.10gb@gpu-2`` -> (``mig-1g.10gb``, ``gpu-2``); a plain pool -> (pool, "")."""
    pool, _, node = key.partition("@")
    return pool, node


def node_by_hostname(view: ClusterView, hostname: str):
    return next((n for n in view.nodes.values() if n.hostname == hostname), None)


def units_on_node(view: ClusterView, pool: str, hostname: str) -> tuple[int, int]:
    """(units of ``pool`` on node ``hostname``, of which free), as swarm counts them."""
    node = node_by_hostname(view, hostname)
    if node is None:
        return 0, 0
    if pool == POOL_SHARED:
        kinds = [k for k, (_gpu, node_id, _s, _t) in view.shared.items() if node_id == node.id]
        return sum(view.shared[k][2] for k in kinds), sum(view.shared_free(k) for k in kinds)
    units = [u for u in view.units if u.pool == pool and view.unit_node.get(u.id) == node.id]
    free = [u for u in units if u.id not in view.held] if node.schedulable else []
    return len(units), len(free)


def releasing_on_node(view: ClusterView, pool: str, hostname: str) -> int:
    """Units of ``pool`` on ``hostname`` held by tasks told to stop (a server just stopped)."""
    node = node_by_hostname(view, hostname)
    return sum(
        1 for u in view.units
        if u.pool == pool and u.id in view.releasing and node is not None and view.unit_node.get(u.id) == node.id
    )


def kind_on_node(view: ClusterView, pool: str, hostname: str, in_flight: int = 0) -> str | None:
    """The generic-resource kind to request for a unit of ``pool`` on ``hostname``, when one is
    free there beyond the ``in_flight`` spawns already let through for it; else None."""
    node = node_by_hostname(view, hostname)
    if node is None or not node.schedulable:
        return None
    if pool == POOL_SHARED:
        for kind in sorted(view.shared):
            if view.shared[kind][1] == node.id and view.shared_free(kind) - in_flight > 0:
                return kind
        return None
    _total, free = units_on_node(view, pool, hostname)
    return kind_of_pool(pool) if free - in_flight > 0 else None


def files_phrase(paths: Sequence[str]) -> str:
    """``/home/jovyan/scratch`` -> ``~/scratch``: how users know their folders."""
    names = [f"~/{posixpath.basename(p.rstrip('/'))}" for p in paths if p]
    return ", ".join(names) or "~/scratch"


def decide(home: str, view: ClusterView, pool: str | None, choice: str, paths: Sequence[str]) -> Placement:
    """Where the next server of a user whose files are on ``home`` goes (pool None: CPU-only).

    - no home yet: :data:`FREE` (the node it lands on becomes the home);
    - the home node can serve the profile now: :data:`PLACE_HOME`;
    - it cannot: ``choice`` decides (``wait``: :data:`PLACE_HOME`, in the home node's line;
      ``anywhere``: :data:`FREE`); without a choice, :data:`ASK` with the message.  Waiting is
      only offered where it can end: the node takes servers and has units of the pool.
    """
    if not home:
        return Placement(FREE)
    files = files_phrase(paths)
    node = node_by_hostname(view, home)
    if node is None:
        why, can_wait = "which has left the swarm", False
    elif node.state != "ready":
        why, can_wait = f"which is {node.state or 'not ready'} now", False
    elif node.availability != "active":
        why, can_wait = f"which the hub's admin has {'drained' if node.availability == 'drain' else 'paused'}", False
    elif pool is None:
        return Placement(PLACE_HOME, home)
    else:
        total, free = units_on_node(view, pool, home)
        if free or releasing_on_node(view, pool, home):
            return Placement(PLACE_HOME, home)  # a unit being released: free in a moment
        can_wait = total > 0
        why = f"which has no free {pool_label(pool)} now" if can_wait else f"which has no {pool_label(pool)}"
    moved = (
        f"Your server starts on another node with an empty {files.split(', ')[0]}; your files stay on "
        f"{home} and are there again when a later server of yours runs on {home}."
    )
    if choice == ANYWHERE:
        return Placement(FREE, home, moved)
    if choice == WAIT and can_wait:
        return Placement(PLACE_HOME, home)
    other = f"start on another node with an empty {files.split(', ')[0]} (your files stay on {home})"
    if can_wait:
        message = (
            f"Your files ({files}) are on {home}, {why}. Wait in line for {home}, or {other}. "
            'Choose one on the spawn form, or send "placement": "wait" or "anywhere" with your request.'
        )
    else:
        message = (
            f"Your files ({files}) are on {home}, {why}. You can {other}: choose it on the spawn "
            'form, or send "placement": "anywhere" with your request.'
        )
    return Placement(ASK, home, message, can_wait)


def form_notes(home: str, view: ClusterView, pools: Mapping[str, str | None], paths: Sequence[str]) -> dict[str, str]:
    """slug -> what the form says of that profile and the home node (``pools``: slug -> pool)."""
    notes = {}
    for slug, pool in pools.items():
        placed = decide(home, view, pool, "", paths)
        if placed.action == PLACE_HOME:
            notes[slug] = f"on {home}, where this server starts"
        elif placed.action == ASK:
            where = placed.message.split(". ")[0].removeprefix(f"Your files ({files_phrase(paths)}) are ")
            notes[slug] = f"{where}: choose below what to do"
    return notes


# ---- NFS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NFS:
    """``storage.nfs`` of ``gpuhub.yaml``: the server, the exported directory holding one
    directory per user, and the mount options (``rw`` is always given)."""

    server: str
    export_root: str
    options: str = "nfsvers=4.1"


def nfs_volume_options(nfs: NFS, user: str, purpose: str) -> dict[str, str]:
    """The ``local`` driver options of ``user``'s ``purpose`` volume (``scratch``, ``tutorials-copy``)
    on ``nfs``: ``device=:<export_root>/<user>/<purpose>``.  Creating the volume mounts nothing;
    the node mounts it when a server starts (it needs an NFS client, and the directory must exist
    on the server: ``gpuhub`` makes no directories on it)."""
    opts = [o for o in (nfs.options or "").split(",") if o and not o.startswith("addr=") and o not in ("rw", "ro")]
    root = "/" + nfs.export_root.strip("/")
    return {
        "type": "nfs",
        "o": ",".join([f"addr={nfs.server}", "rw", *opts]),
        "device": f":{posixpath.join(root, user, purpose)}",
    }


#: appended to the names of NFS-backed volumes: a node-local volume of the old name (made before
#: the operator configured NFS) would otherwise be used as it is, and the files would not follow
NFS_SUFFIX = "-nfs"


def with_nfs(mounts: list[Any], nfs: NFS | None, user: str) -> list[Any]:
    """``mounts`` (docker Mount dicts) with the user's own volumes on ``nfs`` (None: unchanged).

    A user's volume is known by its ``org.gpuhub.volume`` label (:func:`volumes.volume_labels`);
    it gets its own name (:data:`NFS_SUFFIX`).
    """
    if nfs is None:
        return mounts
    for mount in mounts:
        options = mount.get("VolumeOptions") or {}
        purpose = (options.get("Labels") or {}).get("org.gpuhub.volume")
        if mount.get("Type") == "volume" and purpose:
            options["DriverConfig"] = {"Name": "local", "Options": nfs_volume_options(nfs, user, purpose)}
            mount["VolumeOptions"] = options
            mount["Source"] = str(mount["Source"]) + NFS_SUFFIX
    return mounts
