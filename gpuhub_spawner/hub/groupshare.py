"""The groups' guaranteed shares, bursts and reservations as one spawn sees them (rules:
core/shares.py, core/reservations.py).

Read from the hub's groups (properties ``gpu_share`` and ``gpu_reservations``) when a GPU spawn
asks for a unit, so an admin's edit counts from the next Start.  One that cannot be read stops
GPU spawns with a message to tell the admin: a guarantee or reservation is never silently
dropped (the group would lose it) nor taken as "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from gpuhub_spawner.core.reservations import PROPERTY as RESERVATIONS
from gpuhub_spawner.core.reservations import (
    Reservation,
    ReservationError,
    parse_reservations,
    with_reservations,
)
from gpuhub_spawner.core.shares import (
    PROPERTY,
    PoolShares,
    Share,
    ShareError,
    choose_group,
    parse_shares,
)
from gpuhub_spawner.hub.errors import spawn_error

UNREADABLE = ("A GPU share or reservation set on one of the hub's groups cannot be read, so no GPU "
              "server can start now. Tell the hub's admin.")


class GroupShares:
    """Spawner mixin: ``pool_share`` for the spawn under way, kept as ``gpu_share`` for its labels."""

    #: the shares and group of this spawn's unit (None: no group has a share of its pool)
    gpu_share: PoolShares | None = None

    def all_group_shares(self) -> tuple[dict[str, dict[str, Share]], dict[str, list[Reservation]]]:
        """group -> pool -> share, and group -> reservations, for every group of the hub that sets them."""
        from jupyterhub import orm

        shares, reservations = {}, {}
        for group in self.user.db.query(orm.Group):
            props = group.properties or {}
            try:
                if props.get(PROPERTY) is not None:
                    shares[group.name] = parse_shares(props[PROPERTY], f"group '{group.name}'")
                if props.get(RESERVATIONS) is not None:
                    reservations[group.name] = parse_reservations(props[RESERVATIONS], f"group '{group.name}'")
            except (ShareError, ReservationError) as e:
                raise spawn_error(UNREADABLE, "config-error", log_message=f"{self.user.name}: {e}") from None
        return shares, reservations

    def pool_share(self, pool: str, held: Mapping[str, int]) -> PoolShares | None:
        """The shares of ``pool`` now (reservations in their window included) and the group this
        spawn counts for, given the units ``held`` by each group; None when no group has a share
        or a reservation of the pool now (no rule applies)."""
        shares, reservations = self.all_group_shares()
        now_shares = with_reservations(shares, reservations, pool, datetime.now(timezone.utc),
                                       float(self.gpu_reservation_grace) * 60)
        self.gpu_share = None
        if now_shares:
            group = choose_group((g.name for g in self.user.groups), now_shares, held)
            self.gpu_share = PoolShares(now_shares, group)
        return self.gpu_share

    @property
    def gpu_share_group(self) -> str:
        return self.gpu_share.group if self.gpu_share is not None else ""
