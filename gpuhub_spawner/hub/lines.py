"""What the hub's lines want back, for the culler: ``GET /hub/api/gpuhub/lines``.

Only the hub knows who waits in which line and which group's guarantee or reservation each
spawn waits under (:mod:`.fairline`, :mod:`gpuhub_spawner.core.shares`); the culler knows who
is idle.  So the hub answers, per pool whose line wants units back (:func:`~gpuhub_spawner.core.shares.wanted_back`)::

    {"pools": {"gpu": {"units": 1, "reserved_waits": [742.0], "over": ["ann", "bob"]}}}

- ``units``: units that spawns waiting within their group's guarantee or reservation lack;
- ``reserved_waits``: how long (s) each such spawn under a reservation has waited;
- ``over``: users whose servers of the pool count for a group holding more than its share
  (or for no group with a share): the culler reclaims their idle servers first, and, once a
  reservation's member has waited past its bound, one of them busy or not (``hub_services/culler``).
  On a swarm, when those who want units wait only for their home node (their files are there),
  only the servers on those nodes are named.

The route needs :data:`LINES_SCOPE`, a custom scope only the culler's role holds (no user,
not even an admin, holds it; it names users, so it is not public).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from gpuhub_spawner.core.home_node import split_line_key
from gpuhub_spawner.core.shares import Share, wanted_back
from gpuhub_spawner.hub.fairline import Ticket

LINES_SCOPE = "custom:gpuhub-lines:read"
SCOPE_SPEC = {
    LINES_SCOPE: {
        "display_name": "Read the GPU lines' wants",
        "description": "Which pools' lines want units back and whose servers are over their group's share.",
    }
}


def pool_wants(tickets: Iterable[Ticket], held: Mapping[str, int], holders: Iterable[tuple[str, str]],
               now: float) -> dict[str, Any] | None:
    """One pool's entry: its waiters' wants given the units ``held`` by each group and the
    (user, group) of each server holding one; None when it wants nothing back."""
    with_share = [t for t in tickets if t.share is not None]
    if not with_share:
        return None
    shares: Mapping[str, Share] = max(with_share, key=lambda t: t.joined).share.shares  # the latest look
    wanted = wanted_back(shares, held, [(t.share.group, t.joined) for t in with_share], now)
    if not wanted.units:
        return None
    over = sorted({user for user, group in holders if user and group in wanted.over})
    return {"units": wanted.units, "reserved_waits": list(wanted.reserved_waits), "over": over}


def allocator_wants(alloc: Any, now: float) -> dict[str, dict[str, Any]]:
    """The wants of a single-host allocator's lines."""
    out = {}
    for pool, tickets in alloc.line.tickets().items():
        holders = [(alloc.line.owners.get(h, ""), alloc.line.groups.get(h, ""))
                   for h, unit in alloc.ledger.holders().items() if alloc.inventory.by_id[unit].pool == pool]
        entry = pool_wants(tickets, alloc.held_by_group(pool), holders, now)
        if entry:
            out[pool] = entry
    return out


def gate_wants(gate: Any, now: float) -> dict[str, dict[str, Any]]:
    """The wants of a swarm gate's lines (a pool's own line and its per-node lines together)."""
    from gpuhub_spawner.core.cluster import ClusterView

    view = gate.view or ClusterView()
    by_pool: dict[str, list[Ticket]] = {}
    for key, tickets in gate.line.tickets().items():
        by_pool.setdefault(split_line_key(key)[0], []).extend(tickets)
    out = {}
    for pool, tickets in by_pool.items():
        # those waiting for their home node only (their files are there) want a unit back there
        nodes = {split_line_key(t.pool)[1] for t in tickets if t.share is not None}
        anywhere = "" in nodes
        holders = [(labels.user, labels.group) for name, labels in view.labels.items()
                   if labels.pool == pool and name in view.placements
                   and (anywhere or _hostname(view, name) in nodes)]
        holders += [(gate.line.owners.get(h, ""), gate.line.groups.get(h, "")) for h, (key, _) in gate.inflight.items()
                    if anywhere and split_line_key(key)[0] == pool and h not in view.placements]
        entry = pool_wants(tickets, gate.held_by_group(view, pool), holders, now)
        if entry:
            out[pool] = entry
    return out


def _hostname(view: Any, service: str) -> str:
    node = view.nodes.get(view.placements[service].node_id)
    return node.hostname if node is not None else ""


def hub_wants(states: Iterable[Any], now: float | None = None) -> dict[str, Any]:
    """The answer of the route: every allocator's and gate's wants, by pool."""
    now = time.time() if now is None else now
    pools: dict[str, dict[str, Any]] = {}
    for state in states:
        for alloc in list(state.allocators.values()):
            pools.update(allocator_wants(alloc, now))
        for gate in list(state.gates.values()):
            pools.update(gate_wants(gate, now))
    return {"pools": pools}


def handler() -> type:
    """The route's handler class (imports JupyterHub: only the hub process calls this)."""
    from jupyterhub.apihandlers.base import APIHandler
    from tornado import web

    from gpuhub_spawner.hub.state import HubState

    class LinesHandler(APIHandler):
        def get(self) -> None:
            # checked here, not with needs_scope: a custom scope is known only once the hub
            # has read its config, after this class is made
            if self.current_user is None or LINES_SCOPE not in self.parsed_scopes:
                raise web.HTTPError(403, f"This needs the scope {LINES_SCOPE} (the culler's role holds it).")
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(hub_wants(HubState.existing())))

    return LinesHandler
