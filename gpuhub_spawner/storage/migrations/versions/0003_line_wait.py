"""``gpuhub_line_wait``: each spawn's finished wait in a pool's line.

When it joined and when its wait ended (a unit, refused, cancelled), the place and the likely-wait
range it was first told: the admin page's queue-length chart and how good the estimates were.

Revision ID: 0003_line_wait
Revises: 0002_usage_ended_at_index
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_line_wait"
down_revision = "0002_usage_ended_at_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "gpuhub_line_wait",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True, nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("pool", sa.String(255), nullable=False),
        sa.Column("joined_at", when, nullable=False),
        sa.Column("ended_at", when, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("place", sa.Integer(), nullable=False),
        sa.Column("told_low", sa.Float(), nullable=True),
        sa.Column("told_high", sa.Float(), nullable=True),
        sa.Column("holds", sa.Integer(), nullable=False),
    )
    op.create_index("ix_gpuhub_line_wait_ended_at", "gpuhub_line_wait", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_gpuhub_line_wait_ended_at", table_name="gpuhub_line_wait")
    op.drop_table("gpuhub_line_wait")
