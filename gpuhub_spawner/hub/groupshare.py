"""The groups' guaranteed shares, bursts and reservations as one spawn sees them (rules:
core/shares.py, core/reservations.py).

Read from the hub's groups (properties ``gpu_share`` and ``gpu_reservations``) when a GPU spawn
asks for a unit, so an admin's edit counts from the next Start.  One that cannot be read stops
GPU spawns with a message to tell the admin: a guarantee or reservation is never silently
dropped (the group would lose it) nor taken as "no limit".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from gpuhub_spawner.core.reservations import PROPERTY as RESERVATIONS
from gpuhub_spawner.core.reservations import (
    Reservation,
    ReservationError,
    keeps_from,
    parse_reservations,
    with_reservations,
)
from gpuhub_spawner.core.shares import (
    PROPERTY,
    PoolShares,
    Share,
    ShareError,
    choose_group,
    overcommitted,
    parse_shares,
    pool_shares,
)
from gpuhub_spawner.core.waits import Keep
from gpuhub_spawner.hub.errors import spawn_error

UNREADABLE = ("A GPU share or reservation set on one of the hub's groups cannot be read, so no GPU "
              "server can start now. Tell the hub's admin.")


class GroupShares:
    """Spawner mixin: ``pool_share`` for the spawn under way, kept as ``gpu_share`` for its labels."""

    #: the shares and group of this spawn's unit (None: no group has a share of its pool)
    gpu_share: PoolShares | None = None

    def all_group_shares(self) -> tuple[dict[str, dict[str, Share]], dict[str, list[Reservation]]]:
        """group -> pool -> share, and group -> reservations, for every group of the hub that sets
        them; :class:`ShareError` or :class:`ReservationError` naming the group when one cannot be read."""
        from jupyterhub import orm

        shares, reservations = {}, {}
        for group in self.user.db.query(orm.Group):
            props = group.properties or {}
            if props.get(PROPERTY) is not None:
                shares[group.name] = parse_shares(props[PROPERTY], f"group '{group.name}'")
            if props.get(RESERVATIONS) is not None:
                reservations[group.name] = parse_reservations(props[RESERVATIONS], f"group '{group.name}'")
        return shares, reservations

    def pool_share(self, pool: str, held: Mapping[str, int]) -> PoolShares | None:
        """The shares of ``pool`` now (reservations in their window included) and the group this
        spawn counts for, given the units ``held`` by each group; None when no group has a share
        or a reservation of the pool now (no rule applies)."""
        try:
            groups = self.all_group_shares()
        except (ShareError, ReservationError) as e:
            raise spawn_error(UNREADABLE, "config-error", log_message=f"{self.user.name}: {e}") from None
        self.gpu_share = self._shares_now(pool, held, *groups)
        if self.gpu_share is not None:
            self._say_overcommitted(pool, self.gpu_share.shares)
        return self.gpu_share

    #: (pool, units over, pool size) already logged by this hub process
    _overcommit_said: set[tuple[str, int, int]] = set()

    def _say_overcommitted(self, pool: str, shares: Mapping[str, Share]) -> None:
        """Tell the admin (the hub's log, once per pool and excess) when the guarantees of
        ``pool`` (reservations in their grace period included) add up to more than it holds."""
        size = self._pool_size(pool)  # type: ignore[attr-defined]
        over = overcommitted(shares, size) if size else 0
        if over and (pool, over, size) not in self._overcommit_said:
            self._overcommit_said.add((pool, over, size))
            promised = ", ".join(f"{g} {s.guaranteed}" for g, s in sorted(shares.items()) if s.guaranteed)
            self.log.warning(  # type: ignore[attr-defined]
                "Pool %s is overcommitted: its groups are guaranteed %d units (%s) and it has %d; those groups "
                "share it first come, and a guarantee may not be met. Lower a gpu_share or a reservation, "
                "or add units.", pool, size + over, promised, size)

    def _shares_now(self, pool: str, held: Mapping[str, int], shares: Mapping[str, Mapping[str, Share]],
                    reservations: Mapping[str, list[Reservation]]) -> PoolShares | None:
        now_shares = with_reservations(shares, reservations, pool, datetime.now(timezone.utc),
                                       float(self.gpu_reservation_grace) * 60)
        if not now_shares:
            return None
        return PoolShares(now_shares, choose_group((g.name for g in self.user.groups), now_shares, held))

    def kept_from_me(self, pool: str, held: Mapping[str, int]) -> list[Keep]:
        """What the other groups' guarantees and reservations keep of ``pool`` from this user
        (for the wait estimate), given the units ``held`` by each group; raises as
        :meth:`all_group_shares`."""
        shares, reservations = self.all_group_shares()
        return keeps_from(pool_shares(shares, pool), reservations, pool, datetime.now(timezone.utc),
                          float(self.gpu_reservation_grace) * 60, (g.name for g in self.user.groups), held)

    def free_for_me(self, free: Mapping[str, int], held: Callable[[str], Mapping[str, int]]) -> dict[str, int]:
        """The free counts the spawn form shows this user: per pool, the free units they could
        take now (a group's unused guarantee keeps some from others; a burst caps its members).
        With a share that cannot be read, the pools' own counts (the Start then says why not)."""
        try:
            groups = self.all_group_shares()
        except (ShareError, ReservationError):
            return dict(free)
        out = dict(free)
        for pool, count in free.items():
            held_now = held(pool)
            mine = self._shares_now(pool, held_now, *groups)
            if mine is not None:
                out[pool] = mine.available(held_now, count)
        return out

    @property
    def gpu_share_group(self) -> str:
        return self.gpu_share.group if self.gpu_share is not None else ""
