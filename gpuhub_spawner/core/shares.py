"""Guaranteed shares and bursts: a group's claim on units of a pool (pure rules).

A group's ``gpu_share`` property (set like a quota, in the admin panel's group properties) maps
pools to the group's share of each::

    {"mig-1g.10gb": {"guaranteed": 4, "burst": 8}, "a100": 1}

- ``guaranteed`` (G): while the group's servers hold fewer than G units of the pool, a member
  takes any free unit, and no one outside the group is given the units that would be needed
  for that: free units up to the group's unused guarantee are *kept* for it.
- ``burst`` (B, at least G; absent or ``"unlimited"``: no cap of its own): past G the group may
  hold up to B units, but only units nobody's unused guarantee needs.  Users in no group with a
  share of the pool are held to the same rule with no guarantee and no cap.
- A bare number is the guarantee with no burst cap.

A unit counts for one group: the one it was admitted under (:func:`choose_group`: the member's
group with the most guarantee left, else the most burst room), written in the server's labels
so that a restarted hub counts the same.  A spawn that may not take a unit now waits in line; a
unit coming free goes to the first in line who *may* take it (:meth:`PoolShares.verdict`), so
a member within its guarantee is not held behind an outsider waiting for an unkept unit.

Guarantees that add up to more than the pool cannot all be met at once: the pool is shared
first come between those groups (``overcommitted``: the hub's log says so at the pool's next GPU
spawn; nothing is refused).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: the group property holding a group's shares
PROPERTY = "gpu_share"
MOST = 1000  # the largest guarantee or burst accepted (as for max_gpu_units)
_NO_CAP = {"unlimited", "none", "null"}

#: why a spawn may not take a free unit now (:meth:`PoolShares.verdict`)
FULL, KEPT, BURST = "full", "kept", "burst"


class ShareError(ValueError):
    """A ``gpu_share`` value that cannot be used; says where, what and what is allowed."""


@dataclass(frozen=True)
class Share:
    guaranteed: int = 0
    #: None: no cap of the group's own (it may use any unit no guarantee keeps)
    burst: int | None = None
    #: units its members take before anyone else in line, none kept for them (a reservation lent
    #: out after its grace period, core/reservations.py); at least ``guaranteed`` counts so too
    claim: int = 0


def _count(value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MOST:
        raise ShareError(f"{what}: {value!r} is not a whole number of units from 0 to {MOST}")
    return value


def _share(value: Any, where: str) -> Share:
    if not isinstance(value, Mapping):
        return Share(_count(value, f"{where} guaranteed"))
    unknown = sorted(set(map(str, value)) - {"guaranteed", "burst"})
    if unknown:
        raise ShareError(f"{where}: {', '.join(unknown)} is not guaranteed or burst")
    guaranteed = _count(value.get("guaranteed", 0), f"{where} guaranteed")
    burst = value.get("burst")
    if burst is None or (isinstance(burst, str) and burst.strip().lower() in _NO_CAP | {""}):
        return Share(guaranteed)
    burst = _count(burst, f"{where} burst")
    if burst < guaranteed:
        raise ShareError(f"{where}: burst {burst} is below guaranteed {guaranteed}")
    return Share(guaranteed, burst)


def parse_shares(raw: Any, where: str = "") -> dict[str, Share]:
    """pool -> :class:`Share` from a ``gpu_share`` property (a mapping or its JSON text; None or
    blank: no shares).  Raises :class:`ShareError` naming ``where`` (e.g. "group 'course'")."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ShareError(f"{PROPERTY} of {where or 'a group'} is not JSON: {raw[:80]!r}") from None
    if not isinstance(raw, Mapping):
        raise ShareError(f"{PROPERTY} of {where or 'a group'} must map pools to shares, not {raw!r:.80}")
    return {str(pool): _share(value, f"{PROPERTY} of {where or 'a group'}, pool {pool}") for pool, value in raw.items()}


def pool_shares(groups: Mapping[str, Mapping[str, Share]], pool: str) -> dict[str, Share]:
    """group -> its share of ``pool`` (groups without one left out)."""
    return {group: shares[pool] for group, shares in groups.items() if pool in shares}


def overcommitted(shares: Mapping[str, Share], size: int) -> int:
    """Units the guarantees of one pool promise beyond its ``size`` (0: all can be met at once)."""
    return max(0, sum(s.guaranteed for s in shares.values()) - size)


def choose_group(member_of: Iterable[str], shares: Mapping[str, Share], held: Mapping[str, int]) -> str:
    """The group a new unit of the pool counts for: of the user's groups with a share, the one
    with the most guarantee left, else the most burst room (no cap first); by name on a tie;
    "" when none of the user's groups has a share of the pool."""
    mine = sorted(g for g in set(member_of) if g in shares)
    if not mine:
        return ""

    def order(group: str) -> tuple[int, float, str]:
        share, used = shares[group], held.get(group, 0)
        burst = math.inf if share.burst is None else share.burst - used
        return -max(0, share.guaranteed - used), -burst, group

    return min(mine, key=order)


@dataclass(frozen=True)
class PoolShares:
    """Every group's share of one pool, and the group a spawn counts for ("": none)."""

    shares: Mapping[str, Share]
    group: str = ""

    def first_served(self, held: Mapping[str, int]) -> bool:
        """Its group holds fewer units than its guarantee or claim: the spawn goes before those in
        line who have neither, for any unit it may take."""
        share = self.shares.get(self.group)
        return share is not None and held.get(self.group, 0) < entitled(share)

    def available(self, held: Mapping[str, int], free: int) -> int:
        """Of ``free`` units, how many this spawn's user could take: those no other group's
        unused guarantee keeps, at most its group's burst room (what the spawn form shows)."""
        share = self.shares.get(self.group)
        room = free if share is None or share.burst is None else share.burst - held.get(self.group, 0)
        return max(0, min(free - self.kept_for_others(held), room))

    def kept_for_others(self, held: Mapping[str, int]) -> int:
        """Free units the other groups' unused guarantees keep from this spawn."""
        return sum(max(0, s.guaranteed - held.get(g, 0)) for g, s in self.shares.items() if g != self.group)

    def verdict(self, held: Mapping[str, int], free: int) -> str | None:
        """None when the spawn may take one of ``free`` units now, given the units ``held`` by
        each group; else why not: :data:`FULL`, :data:`KEPT` (for others' guarantees) or
        :data:`BURST` (its group holds its burst)."""
        share = self.shares.get(self.group)
        used = held.get(self.group, 0)
        if share is not None and share.burst is not None and used >= share.burst:
            return BURST  # said even when the pool is full: a unit coming free would not be its
        if free <= 0:
            return FULL
        if share is not None and used < share.guaranteed:
            return None
        if free - self.kept_for_others(held) <= 0:
            return KEPT
        return None

    def why(self, reason: str, pool_label: str) -> str:
        """The sentence a spawn waiting for ``reason`` is told."""
        if reason == BURST:
            share = self.shares[self.group]
            units = f"{share.burst} {pool_label} unit" + ("" if share.burst == 1 else "s")
            return (f"Your group {self.group} holds {units}, the most it may hold at once (its guaranteed "
                    f"share is {share.guaranteed}); you get the next one it gives back.")
        if reason == KEPT:
            return (f"The free {pool_label} units are kept for groups with a guaranteed share that have not "
                    "used it yet; you get one when a unit comes free beyond those.")
        return ""


def entitled(share: Share | None) -> int:
    """Units a group's members may hold before anyone else's claim: its guarantee or claim."""
    return 0 if share is None else max(share.guaranteed, share.claim)


@dataclass(frozen=True)
class Wanted:
    """What a pool's line wants back from servers over their share (:func:`wanted_back`).

    ``units``: units that spawns waiting within their group's guarantee or claim lack;
    ``reserved_waits``: seconds each of those that a *reservation* entitles (a claim) has waited,
    longest first (the culler takes a lent unit back, busy or not, past its bound);
    ``over``: the groups holding more than they are entitled to ("": units of users in no group
    with a share), whose servers give units back, the idle ones first.
    """

    units: int = 0
    reserved_waits: tuple[float, ...] = ()
    over: frozenset[str] = frozenset()


def wanted_back(shares: Mapping[str, Share], held: Mapping[str, int], waiting: Iterable[tuple[str, float]],
                now: float) -> Wanted:
    """What the line of one pool wants back, given every group's share, the units ``held`` by
    each group and ``waiting``: (group, joined at) of each spawn in line, in any order.

    A spawn counts when its group holds (with those of its group ahead of it) fewer units than
    its guarantee or claim; one that only waits for a free unit beyond that wants nothing back.
    """
    units, reserved, counted = 0, [], dict(held)
    for group, joined in sorted(waiting, key=lambda w: w[1]):
        share = shares.get(group)
        if counted.get(group, 0) >= entitled(share):
            continue
        counted[group] = counted.get(group, 0) + 1
        units += 1
        if share is not None and counted[group] <= share.claim:
            reserved.append(max(0.0, now - joined))
    if not units:
        return Wanted()
    over = frozenset(g for g, n in held.items() if n > entitled(shares.get(g)))
    return Wanted(units, tuple(sorted(reserved, reverse=True)), over)
