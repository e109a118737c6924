"""Taking units back for a group's guarantee or reservation (issue: shares and reservations).

The hub says, per pool, what its line wants back (``GET /hub/api/gpuhub/lines``,
:mod:`gpuhub_spawner.hub.lines`): how many units members waiting within their group's guarantee
or reservation lack, how long each reservation member has waited, and whose servers count for
a group over its share (or for no group with a share).  This module turns that into two sets
of servers for the pass:

- **over share**: every such server of the pool.  Its idle timeout is ``reclaim_idle_seconds``
  (shorter than the usual one), so the idle ones are reclaimed first; activity lifts the
  warning, as for any idle one.  A busy one is never stopped for a *guarantee*.
- **taken back**: once a reservation's member has waited ``reclaim_after_seconds``, one of
  those servers per such member, the most recently started first, is warned and stopped,
  busy or not: a reserved unit lent out comes back within that bound plus the warning.

When the line no longer wants the unit (the member got one, or gave up), the warning is lifted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub_services.common.hubapi import HubAPIError

log = logging.getLogger(__name__)

LINES_PATH = "/gpuhub/lines"


@dataclass(frozen=True)
class Reclaims:
    over_share: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    taken_back: frozenset[tuple[str, str]] = field(default_factory=frozenset)


async def read_wants(hub: Any) -> dict[str, Any]:
    """The hub's pools that want units back; {} when it cannot say (nothing is reclaimed)."""
    try:
        doc = await hub.request("GET", LINES_PATH)
    except Exception as e:  # noqa: BLE001 - an older hub, no scope, the hub down: reclaim nothing
        if not isinstance(e, HubAPIError):
            log.debug("reading the lines failed", exc_info=True)
        log.warning("Culler pass: cannot read what the GPU lines want back (%s); nothing is reclaimed", e)
        return {}
    pools = doc.get("pools") if isinstance(doc, dict) else None
    return pools if isinstance(pools, dict) else {}


def plan(wants: Mapping[str, Any], servers: Mapping[tuple[str, str], tuple[str, float]],
         reclaim_after: float) -> Reclaims:
    """``servers``: (user, server) -> (pool, started) of the GPU servers running now."""
    over: set[tuple[str, str]] = set()
    back: set[tuple[str, str]] = set()
    for pool, want in wants.items():
        if not isinstance(want, dict) or not isinstance(want.get("units"), int):
            continue  # not what the hub sends: nothing is reclaimed for it
        users = set(want.get("over") or ())
        mine = [key for key, (p, _) in servers.items() if p == pool and key[0] in users]
        over.update(mine)
        waited = [w for w in want.get("reserved_waits") or () if isinstance(w, (int, float)) and w >= reclaim_after]
        due = min(want["units"], len(waited))
        newest = sorted(mine, key=lambda key: (-servers[key][1], key))
        back.update(newest[:due])
    return Reclaims(frozenset(over), frozenset(back))
