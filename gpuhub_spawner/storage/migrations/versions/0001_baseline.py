"""Baseline: the tables gpuhub created with ``create_all`` before it had migrations.

Exactly the schema of the code before Alembic (commit 658068d): the usage ledger, quota
overrides and user notices (hub), cull warnings and keep-alives (culler).  A database made by
that code has some or all of these tables and no version table; this revision then creates
only the tables and indexes it lacks (a hub without the culler never made the culler's
tables), so adopting such a database keeps every row.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> dict[str, list[sa.Column]]:
    """The tables as they were (new Column objects each call: a Column belongs to one table)."""
    when = sa.DateTime(timezone=True)
    return {
        "gpuhub_usage": [
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True, nullable=False),
            sa.Column("user", sa.String(255), nullable=False),
            sa.Column("server", sa.String(255), nullable=False),
            sa.Column("unit_id", sa.String(255), nullable=False),
            sa.Column("pool", sa.String(255), nullable=False),
            sa.Column("node", sa.String(255), nullable=False),
            sa.Column("holder", sa.String(255), nullable=False),
            sa.Column("started_at", when, nullable=False),
            sa.Column("ended_at", when, nullable=True),
        ],
        "gpuhub_user_quota": [
            sa.Column("user", sa.String(255), primary_key=True, nullable=False),
            sa.Column("values", sa.Text(), nullable=False),
            sa.Column("updated_at", when, nullable=False),
            sa.Column("updated_by", sa.String(255), nullable=False),
        ],
        "gpuhub_user_notice": [
            sa.Column("user", sa.String(255), primary_key=True, nullable=False),
            sa.Column("server", sa.String(255), primary_key=True, nullable=False),
            sa.Column("message", sa.String(1000), nullable=False),
            sa.Column("at", when, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("process", sa.String(128), nullable=False),
        ],
        "gpuhub_cull_warning": [
            sa.Column("user", sa.String(255), primary_key=True, nullable=False),
            sa.Column("server", sa.String(255), primary_key=True, nullable=False),
            sa.Column("reason", sa.String(32), nullable=False),
            sa.Column("warned_at", sa.Float(), nullable=False),
            sa.Column("cull_at", sa.Float(), nullable=False),
            sa.Column("message", sa.String(1000), nullable=False),
        ],
        "gpuhub_keepalive": [
            sa.Column("user", sa.String(255), primary_key=True, nullable=False),
            sa.Column("server", sa.String(255), primary_key=True, nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
        ],
    }


#: (name, table, columns, options) of every index beside the primary keys
_INDEXES = [
    ("ix_gpuhub_usage_user", "gpuhub_usage", ["user"], {}),
    ("ix_gpuhub_usage_holder", "gpuhub_usage", ["holder"], {}),
    (
        "ux_gpuhub_usage_open_holder",
        "gpuhub_usage",
        ["holder"],
        {
            "unique": True,
            "sqlite_where": sa.text("ended_at IS NULL"),
            "postgresql_where": sa.text("ended_at IS NULL"),
        },
    ),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for table, columns in _tables().items():
        if table not in existing:
            op.create_table(table, *columns)
    indexes: dict[str, set[str]] = {}
    for name, table, columns, options in _INDEXES:
        if table not in indexes:
            found = inspector.get_indexes(table) if table in existing else []
            indexes[table] = {ix["name"] for ix in found}
        if name not in indexes[table]:
            op.create_index(name, table, columns, **options)


def downgrade() -> None:
    for name, table, _columns, _options in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    for table in reversed(list(_tables())):
        op.drop_table(table)
