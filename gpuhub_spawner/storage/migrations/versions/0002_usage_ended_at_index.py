"""An index on ``gpuhub_usage.ended_at``.

The exporter reads "every open interval and every one that ended after <since>" on each
refresh (``UsageLedger.intervals_since``), and budget checks read the intervals overlapping a
period: without this index both scan the whole ledger, which only grows.  With it, sqlite and
PostgreSQL answer ``ended_at IS NULL OR ended_at > :since`` from the index.

Revision ID: 0002_usage_ended_at_index
Revises: 0001_baseline
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002_usage_ended_at_index"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_gpuhub_usage_ended_at", "gpuhub_usage", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_gpuhub_usage_ended_at", table_name="gpuhub_usage")
