"""Fill a gpuhub database with the code of an older commit (run with that tree on PYTHONPATH).

Used by ``test_migrations.py``: ``python legacy_writer.py URL [hub-only]`` writes rows to
every table that code creates (open and closed usage intervals, quota overrides, notices and
starts under way; with the culler's store, cull warnings and keep-alives), then prints, as
JSON, what that code reads back, and where it was imported from.  ``hub-only`` opens only the
usage ledger, as a hub without the culler did.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import gpuhub_spawner
from gpuhub_spawner.storage.ledger import UsageLedger

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def fill_ledger(ledger: UsageLedger) -> dict:
    ledger.start("ada", "", "GPU-0", "full", "jupyter-ada", now=T0)
    ledger.end("jupyter-ada", now=T0 + HOUR)  # closed
    ledger.start("ada", "big", "GPU-1/0", "mig-3g-40gb", "jupyter-ada-big", node="n1", now=T0 + 2 * HOUR)  # open
    ledger.start("bob", "", "GPU-1/1", "mig-3g-40gb", "jupyter-bob", node="n2", now=T0 + HOUR)
    ledger.start("bob", "", "GPU-2", "full", "jupyter-bob", now=T0 + 3 * HOUR)  # closes the stale one, opens
    ledger.set_override("ada", {"max_gpu_units": 2, "gpu_hours_per_period": 7.5}, by="admin")
    ledger.set_override("cy", {"period": "week"}, by="teacher")
    ledger.set_notice("dee", "", "Your server stopped while the hub was down.")
    ledger.mark_starting("eve", "gpu", "hub-1234")  # a start under way
    return {
        "open": [{**a, "started_at": a["started_at"].isoformat()} for a in ledger.open_allocations()],
        "ada_seconds": ledger.gpu_seconds("ada", T0 - HOUR, T0 + 10 * HOUR),
        "bob_seconds": ledger.gpu_seconds("bob", T0 - HOUR, T0 + 10 * HOUR),
        "overrides": {user: ledger.get_override(user) for user in ("ada", "cy", "nobody")},
        "notices": ledger.notices(),
    }


def fill_culler(url: str) -> dict:
    from hub_services.culler.notices import NoticeStore

    store = NoticeStore(url)
    store.set_warning("ada", "big", "idle", 1_700_000_000.25, 1_700_000_600.5, "Idle for 2 h: stopping soon.")
    store.set_warning("bob", "", "budget", 1_700_000_100.0, 1_700_000_700.0, "GPU budget used up.")
    store.keepalive("ada", "big", at=1_700_000_300.125)
    store.keepalive("cy", "", at=1_700_000_400.0)
    read = {
        "warnings": sorted(
            [r.user, r.server, r.reason, r.warned_at, r.cull_at, r.message] for r in store.warnings().values()
        ),
        "keepalives": sorted([*key, at] for key, at in store.keepalives().items()),
    }
    store.dispose()
    return read


def main(url: str, hub_only: bool) -> None:
    ledger = UsageLedger(url)
    read = {"imported_from": gpuhub_spawner.__file__, **fill_ledger(ledger)}
    ledger.dispose()
    if not hub_only:
        read.update(fill_culler(url))
    print(json.dumps(read))


if __name__ == "__main__":
    main(sys.argv[1], hub_only=sys.argv[2:] == ["hub-only"])
