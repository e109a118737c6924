"""The spawners' use of the usage database: the GPU ledger, quota overrides, the budget left.

Every database call runs in a worker thread: a slow or locked database never holds the hub's
event loop.  The ledger itself (one per database URL and hub) lives in the hub's state.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

from gpuhub_spawner.core import fairshare
from gpuhub_spawner.core.inventory import Unit
from gpuhub_spawner.core.quotas import QuotaError, QuotaPolicy, budget_since, budget_view, resolve_policy
from gpuhub_spawner.hub.errors import spawn_error
from gpuhub_spawner.hub.progress import PROCESS_ID
from gpuhub_spawner.storage.ledger import PoolHolds, UsageLedger, WaitRecord

#: how far back past holds count for wait estimates
WAIT_HISTORY = timedelta(days=14)


class UsageRecords:
    """Ledger, quota and start-up sync of one spawner (mixed into ``GPUSpawnerMixin``).

    Uses the spawner's ``usage_db_url``, ``quota_defaults``, ``hub_state``, ``get_allocator()``
    and ``user``.
    """

    #: seconds between tries of the start-up sync while the engine or database does not answer
    startup_sync_retry_delays: tuple[float, ...] = (5, 10, 30, 60, 120)

    @property
    def usage_ledger(self) -> UsageLedger | None:
        if not self.usage_db_url:
            return None
        return self.hub_state.ledger(self.usage_db_url)  # opened from worker threads too

    async def ledger_in_thread(self) -> UsageLedger | None:
        """:attr:`usage_ledger`, opened off the event loop (opening creates missing tables)."""
        if not self.usage_db_url or self.hub_state.has_ledger(self.usage_db_url):
            return self.usage_ledger
        return await asyncio.to_thread(lambda: self.usage_ledger)

    def schedule_startup_sync(self) -> None:
        """Sync with the engine and the ledger as soon as the hub process makes its first spawner.

        The hub (re)starting makes a spawner for every user with a server: leftovers of spawns a
        crash cut off are removed, their units freed and their usage rows closed then, not when
        somebody next opens the spawn page.  Outside a running event loop nothing is scheduled.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        syncs = self.hub_state.startup_syncs
        key = self._engine_key()
        if key in syncs:
            return

        async def sync() -> None:
            for delay in (0, *self.startup_sync_retry_delays):
                await asyncio.sleep(delay)
                try:
                    await self.sync_allocations()
                    await self._tell_cut_off_starts()
                    return
                except Exception as e:  # noqa: BLE001 - engine or database down: try again later
                    self.log.warning("GPU allocations not synced at start (%s); trying again", e)
            self.log.error("GPU allocations could not be synced at start; the next spawn tries again")

        syncs[key] = asyncio.ensure_future(sync())

    async def _tell_cut_off_starts(self) -> None:
        ledger = await self.ledger_in_thread()
        if ledger is not None:
            told = await asyncio.to_thread(ledger.expire_starting, PROCESS_ID, self.STOPPED_WHILE_DOWN)
            if told:
                self.log.info("%d start(s) were cut off by the hub's restart; their users are told", told)

    async def sync_allocations(self) -> None:
        """Rebuild the held set from the engine once; then close ledger rows of vanished servers."""
        allocator = self.get_allocator()
        await allocator.ensure_synced()
        ledger = await self.ledger_in_thread()
        key = (self._engine_key(), self.usage_db_url)
        reconciled = self.hub_state.ledgers_reconciled
        if ledger is not None and key not in reconciled:
            reconciled.add(key)
            holders = set(allocator.ledger.holders())
            closed = await asyncio.to_thread(ledger.close_all_except, holders)
            if closed:
                self.log.info("Closed %d GPU usage interval(s) of servers gone while the hub was down", closed)

    async def record_usage(self, unit: Unit | None, holder: str) -> None:
        ledger = self.usage_ledger
        if ledger is not None and unit is not None:
            await asyncio.to_thread(
                ledger.start, self.user.name, self.name or "", unit.id, unit.pool, holder, unit.node
            )

    async def end_usage(self, holder: str) -> None:
        ledger = self.usage_ledger
        if ledger is not None:
            await asyncio.to_thread(ledger.end, holder)

    async def quota_policy(self) -> QuotaPolicy:
        """This user's quota now: defaults, their groups' properties, their override (read fresh).

        The override is read in a worker thread: a slow database must not stall the hub.
        """
        groups = [dict(group.properties or {}) for group in self.user.groups]
        ledger = await self.ledger_in_thread()
        override = await asyncio.to_thread(ledger.get_override, self.user.name) if ledger is not None else None
        try:
            return resolve_policy(self.quota_defaults, groups, override)
        except QuotaError as e:
            raise spawn_error(
                "Your quota settings cannot be read, so no server can start. Tell the hub's admin.",
                "config-error",
                log_message=f"bad quota for {self.user.name}: {e}",
            ) from None

    async def gpu_seconds_used(self, policy: QuotaPolicy, now: datetime) -> float:
        """GPU-seconds this user used in the current budget period (0 without a ledger)."""
        ledger = self.usage_ledger
        if ledger is None:
            if policy.gpu_hours_per_period is not None:
                self.log.warning("A GPU-hour budget is set but usage_db_url is empty: it is not enforced")
            return 0.0
        return await asyncio.to_thread(ledger.gpu_seconds, self.user.name, budget_since(policy, now), now)

    async def fair_share_use(self) -> float:
        """This user's GPU-seconds with past use fading (``gpu_fair_share_half_life``): their
        place among equal priorities in a pool's line. 0 when fair share is off or there is no
        ledger; a ledger that cannot be read orders them as new (logged): the line's order is a
        preference, never a reason to refuse a start."""
        half_life = float(self.gpu_fair_share_half_life) * 3600
        ledger = self.usage_ledger
        if half_life <= 0 or ledger is None:
            return 0.0
        now = datetime.now(timezone.utc)
        try:
            spans = await asyncio.to_thread(ledger.spans_of, self.user.name, fairshare.horizon(now, half_life), now)
        except Exception as e:  # noqa: BLE001 - see above
            self.log.warning("Could not read %s's past GPU use for the line's order: %s", self.user.name, e)
            return 0.0
        return fairshare.decayed_seconds(spans, now, half_life)

    async def pool_holds(self, pool: str, fresh: float = 2.0) -> PoolHolds | None:
        """``pool``'s holds now and recently, for a wait estimate (None without a ledger).

        Everyone in the pool's line shares one read begun less than ``fresh`` seconds ago: a
        burst of 20 waiters reads the ledger once, not 20 times, while the hub answers Starts."""
        if not self.usage_db_url:
            return None
        key, now = (self.usage_db_url, pool), time.monotonic()
        begun = self.hub_state.pool_hold_reads.get(key)
        if begun is None or now - begun[0] > fresh:
            begun = (now, asyncio.ensure_future(self._read_pool_holds(pool)))
            self.hub_state.pool_hold_reads[key] = begun
        return await asyncio.shield(begun[1])

    async def _read_pool_holds(self, pool: str) -> PoolHolds | None:
        ledger = await self.ledger_in_thread()
        if ledger is None:
            return None
        since = datetime.now(timezone.utc) - WAIT_HISTORY
        return await asyncio.to_thread(ledger.pool_holds, pool, since)

    def keep_wait(self, record: WaitRecord) -> None:
        """Write a finished wait in line to the ledger, in the notice writer's thread (never
        holding the spawn; a record lost is logged)."""
        if not self.usage_db_url:
            return

        def write() -> None:
            try:
                self.usage_ledger.record_wait(record)
            except Exception as e:  # noqa: BLE001 - see above
                self.log.warning("Could not record %s's wait in line: %s", record.user, e)

        try:
            asyncio.get_running_loop().run_in_executor(self.hub_state.notice_writer, write)
        except RuntimeError:  # no event loop: nothing to record
            pass

    async def _form_notice(self, policy: QuotaPolicy) -> str:
        """The form's line: 'GPU time left this week: 1.5 h' (with a GPU-hour budget), and the
        line's order under fair share."""
        lines = []
        if policy.gpu_hours_per_period is not None and self.usage_ledger is not None:
            now = datetime.now(timezone.utc)
            lines.append(budget_view(policy, await self.gpu_seconds_used(policy, now), now).notice())
        if self.usage_ledger is not None:
            lines.append(fairshare.form_note(await self.fair_share_use(), float(self.gpu_fair_share_half_life)))
        return " ".join(line for line in lines if line)
