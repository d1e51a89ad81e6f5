"""Usage by user and operation: usage_daily_breakdowns, late arrivals indexed, for query_usage.

- usage_daily_breakdowns: per organization and UTC day, per user (``dimensions`` 1), per
  operation (2), or per provider, model, user and operation (7), written by the rollup in the
  same statement as usage_daily_summaries. Keyed by a unique index with NULLS NOT DISTINCT (an event may have
  no user or operation), so the rollup's upsert stays idempotent.
- usage_rollup_days.breakdowns: whether the day's last run wrote its breakdowns. Days rolled
  up before this revision have false: the query reads their events for a breakdown until a
  rollup run of them (``biz2bricks-rollup run --from D --to D``) writes one.
- ix_usage_events_late: the events received more than 10 minutes after they occurred
  (biz2bricks_core.late_events; a frozen copy of its predicate), so the query can check a
  summarised day against its watermark without reading its events. Few rows. usage_events is
  partitioned (0007) and PostgreSQL builds an index on a partitioned table only without
  CONCURRENTLY: the build scans every partition while holding off inserts, so run this
  revision with the consumers paused, as 0007 (their messages wait in Pub/Sub).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of biz2bricks_core.late_events.late_arrival_sql("received_at", "occurred_at").
LATE_ARRIVAL = "(received_at - occurred_at > interval '10 minutes')"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.create_table(
        "usage_daily_breakdowns",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("dimensions", sa.SmallInteger(), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("operation", sa.String(length=200), nullable=True),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("unpriced_count", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "dimensions IN (1, 2, 7)", name=op.f("ck_usage_daily_breakdowns_dimensions_known")
        ),
    )
    op.create_index(
        "uq_usage_daily_breakdowns_key",
        "usage_daily_breakdowns",
        ["organization_id", "day", "dimensions", "provider", "model", "user_id", "operation"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.add_column(
        "usage_rollup_days",
        sa.Column("breakdowns", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.execute("SET LOCAL lock_timeout = 0")  # the index build waits for running readers
    op.create_index(
        "ix_usage_events_late",
        "usage_events",
        ["organization_id", "occurred_at"],
        postgresql_where=sa.text(LATE_ARRIVAL),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_late", table_name="usage_events")
    op.drop_column("usage_rollup_days", "breakdowns")
    op.drop_index("uq_usage_daily_breakdowns_key", table_name="usage_daily_breakdowns")
    op.drop_table("usage_daily_breakdowns")
