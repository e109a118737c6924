"""Alembic's environment for gpuhub's own tables (version table ``gpuhub_alembic_version``).

Run by :func:`gpuhub_spawner.storage.db.upgrade`, which hands over a connection that already
holds the migration lock inside its transaction; Alembic's commands run by hand get
``sqlalchemy.url`` from :func:`gpuhub_spawner.storage.db.alembic_config` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gpuhub_spawner.storage import ledger, notices  # noqa: F401 - every model on the one metadata
from gpuhub_spawner.storage.db import TABLE_PREFIX, VERSION_TABLE, Base, make_engine


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    """Only gpuhub's tables: a database shared with JupyterHub holds others, never to be touched."""
    return type_ != "table" or bool(name and name.startswith(TABLE_PREFIX))


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=_ours,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("gpuhub's migrations run against the database (no --sql mode)")
handed = context.config.attributes.get("connection")
if handed is not None:
    run(handed)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            run(conn)
    finally:
        engine.dispose()
