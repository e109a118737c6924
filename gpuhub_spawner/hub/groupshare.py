"""The groups' guaranteed shares and bursts as one spawn sees them (rules: core/shares.py).

Read from the hub's groups (property ``gpu_share``) when a GPU spawn asks for a unit, so an
admin's edit in the admin panel counts from the next Start.  A share that cannot be read stops
GPU spawns with a message to tell the admin: a guarantee is never silently dropped (the group
would lose it) nor taken as "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuhub_spawner.core.shares import (
    PROPERTY,
    PoolShares,
    Share,
    ShareError,
    choose_group,
    parse_shares,
    pool_shares,
)
from gpuhub_spawner.hub.errors import spawn_error

UNREADABLE = ("A GPU share set on one of the hub's groups cannot be read, so no GPU server can start "
              "now. Tell the hub's admin.")


class GroupShares:
    """Spawner mixin: ``pool_share`` for the spawn under way, kept as ``gpu_share`` for its labels."""

    #: the shares and group of this spawn's unit (None: no group has a share of its pool)
    gpu_share: PoolShares | None = None

    def all_group_shares(self) -> dict[str, dict[str, Share]]:
        """group -> pool -> share, for every group of the hub that sets ``gpu_share``."""
        from jupyterhub import orm

        found = {}
        for group in self.user.db.query(orm.Group):
            raw = (group.properties or {}).get(PROPERTY)
            if raw is None:
                continue
            try:
                found[group.name] = parse_shares(raw, f"group '{group.name}'")
            except ShareError as e:
                raise spawn_error(UNREADABLE, "config-error", log_message=f"{self.user.name}: {e}") from None
        return found

    def pool_share(self, pool: str, held: Mapping[str, int]) -> PoolShares | None:
        """The shares of ``pool`` and the group this spawn counts for, given the units ``held``
        by each group now; None when no group has a share of the pool (no rule applies)."""
        shares = pool_shares(self.all_group_shares(), pool)
        self.gpu_share = None
        if shares:
            self.gpu_share = PoolShares(shares, choose_group((g.name for g in self.user.groups), shares, held))
        return self.gpu_share

    @property
    def gpu_share_group(self) -> str:
        return self.gpu_share.group if self.gpu_share is not None else ""
