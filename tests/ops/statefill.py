"""A hub's state for the ops tests: users, groups with quotas, named servers' spawner state, ledger rows.

Imported by the tests, and run as a script by the upgrade test with an older gpuhub first on
``PYTHONPATH`` (``python statefill.py HUB_URL USAGE_URL``): the rows are then written by that
release's code, and the script prints, as JSON, where ``gpuhub_spawner`` came from.

:func:`table_rows` reads every row of every table with plain SQL (no model of either release),
so a comparison before and after an operation depends on neither.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
USERS = ("ada", "bob", "cy")
GROUP_QUOTAS = {"workshop": {"max_gpu_units": 2, "gpu_hours_per_period": 7.5}, "staff": {"max_gpu_units": 4}}


def fill_hub(url: str) -> None:
    """Users, groups with quota properties, named servers with spawner state (JupyterHub's ORM)."""
    from jupyterhub import orm

    session = orm.new_session_factory(url)()
    users = {name: orm.User(name=name, admin=name == "ada") for name in USERS}
    session.add_all(users.values())
    for group_name, quota in GROUP_QUOTAS.items():
        group = orm.Group(name=group_name, properties=quota)
        group.users = [users["ada"], users["bob"]] if group_name == "workshop" else [users["cy"]]
        session.add(group)
    session.add(orm.Spawner(user=users["ada"], name="", state={"gpu_unit": "GPU-0", "container_id": "c0ffee"}))
    session.add(orm.Spawner(user=users["ada"], name="big", state={"gpu_unit": "GPU-1/0", "pool": "mig-3g-40gb"}))
    session.add(orm.Spawner(user=users["bob"], name="train", state={"gpu_unit": "GPU-2", "object_name": "jupyter-bob"}))
    session.commit()
    session.close()


def fill_usage(url: str) -> None:
    """Closed and open usage intervals, a quota override, a notice (gpuhub's ledger)."""
    from gpuhub_spawner.storage.ledger import UsageLedger

    ledger = UsageLedger(url)
    ledger.start("ada", "", "GPU-0", "full", "jupyter-ada", now=T0)
    ledger.end("jupyter-ada", now=T0 + HOUR)
    ledger.start("ada", "big", "GPU-1/0", "mig-3g-40gb", "jupyter-ada-big", node="n1", now=T0 + 2 * HOUR)
    ledger.start("bob", "train", "GPU-2", "full", "jupyter-bob-train", now=T0 + 3 * HOUR)
    ledger.set_override("bob", {"max_gpu_units": 3}, by="ada")
    ledger.set_notice("cy", "", "Your server stopped while the hub was down.")


def table_rows(url: str) -> dict[str, list[dict[str, str]]]:
    """Every row of every table at ``url`` (column -> repr of its value), in a stable order."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            return {
                name: sorted(
                    ({k: repr(v) for k, v in row._mapping.items()} for row in conn.execute(text(f"SELECT * FROM {quote(name)}"))),
                    key=lambda row: sorted(row.items()),
                )
                for name in inspect(conn).get_table_names()
            }
    finally:
        engine.dispose()


if __name__ == "__main__":
    import gpuhub_spawner

    fill_hub(sys.argv[1])
    fill_usage(sys.argv[2])
    print(json.dumps({"imported_from": gpuhub_spawner.__file__}))
