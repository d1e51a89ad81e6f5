"""Price catalogue of every genai-prices model, tiers and 1-hour cache writes; no silent $0.

- model_pricing: prices in numeric(30, 18); a long-context tier column
  (``above_input_tokens``), a daily window for time-of-day prices, 1-hour cache-write and
  per-request prices, ``origin``
  (catalogue / operator) and ``retired_at`` (rows are never updated); the unique key covers
  live rows only. The catalogue of genai-prices 0.2.3 is applied with ``sync_catalogue``:
  seeded rows whose prices did not change keep their ids.
- usage_events: ``cache_write_1h_tokens``; ``cost_usd`` nullable without default, and
  ``unpriced_reason`` for the events no price row covers.
- usage_limits.unpriced_events_period and usage_daily_summaries.unpriced_count.
- Events stored at $0 for want of a price row (pricing_id NULL) become unpriced (cost NULL)
  and are counted: run ``biz2bricks-rollup reprice --unpriced`` after the upgrade to price them
  from the new catalogue and rebuild their days.

Downgrade keeps one live base-tier catalogue row per (provider, model, effective_from) and
deletes the others, and stores the unpriced events' cost as 0: the old schema cannot say
"unknown".

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-25 22:20:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

from biz2bricks_core.price_catalogue import load_rows, sync_catalogue

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CATALOGUE = Path(__file__).resolve().parent.parent / "data" / "pricing" / "genai-prices-0.2.3.json"
PRICE = sa.Numeric(30, 18)
OLD_PRICE = sa.Numeric(14, 6)
PRICE_COLUMNS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")


def upgrade() -> None:
    for column in PRICE_COLUMNS:
        op.alter_column("model_pricing", column, type_=PRICE, existing_type=OLD_PRICE)
    op.add_column(
        "model_pricing",
        sa.Column("above_input_tokens", sa.BigInteger(), server_default="0", nullable=False),
    )
    for column, default in (("daily_from_minute", "0"), ("daily_until_minute", "1440")):
        op.add_column(
            "model_pricing",
            sa.Column(column, sa.SmallInteger(), server_default=default, nullable=False),
        )
    op.add_column("model_pricing", sa.Column("cache_write_1h_per_mtok", PRICE, nullable=True))
    op.add_column("model_pricing", sa.Column("per_request_usd", PRICE, nullable=True))
    op.add_column(
        "model_pricing",
        sa.Column("origin", sa.String(length=16), server_default="catalogue", nullable=False),
    )
    op.add_column(
        "model_pricing", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_check_constraint(
        op.f("ck_model_pricing_origin_known"),
        "model_pricing",
        "origin IN ('catalogue', 'operator')",
    )
    op.create_check_constraint(
        op.f("ck_model_pricing_tier_nonnegative"), "model_pricing", "above_input_tokens >= 0"
    )
    op.create_check_constraint(
        op.f("ck_model_pricing_daily_window_valid"),
        "model_pricing",
        "daily_from_minute BETWEEN 0 AND 1439 AND daily_until_minute BETWEEN 1 AND 1440",
    )
    op.drop_constraint("uq_model_pricing_provider", "model_pricing", type_="unique")
    op.create_index(
        "uq_model_pricing_live",
        "model_pricing",
        [
            "origin",
            "provider",
            "model",
            "effective_from",
            "above_input_tokens",
            "daily_from_minute",
        ],
        unique=True,
        postgresql_where=sa.text("retired_at IS NULL"),
    )
    sync_catalogue(op.get_bind(), load_rows(CATALOGUE))

    op.add_column(
        "usage_events",
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.alter_column("usage_events", "cost_usd", nullable=True, server_default=None)
    op.add_column("usage_events", sa.Column("unpriced_reason", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_usage_events_unpriced",
        "usage_events",
        ["occurred_at"],
        postgresql_where=sa.text("cost_usd IS NULL"),
    )
    op.add_column(
        "usage_limits",
        sa.Column("unpriced_events_period", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_daily_summaries",
        sa.Column("unpriced_count", sa.BigInteger(), server_default="0", nullable=False),
    )
    # Before this revision an event without a price row was stored at $0 (pricing_id NULL):
    # say it is unknown, and count it, so that `biz2bricks-rollup reprice --unpriced` prices it.
    op.execute(
        "UPDATE usage_events SET cost_usd = NULL, unpriced_reason = 'no_price_row'"
        " WHERE pricing_id IS NULL AND cost_usd = 0"
    )
    op.execute(
        "UPDATE usage_limits l SET unpriced_events_period = e.unpriced FROM ("
        " SELECT l2.organization_id, count(*) AS unpriced FROM usage_limits l2"
        " JOIN usage_events ev ON ev.organization_id = l2.organization_id"
        " AND ev.occurred_at >= l2.period_start AND ev.occurred_at < l2.period_end"
        " WHERE ev.cost_usd IS NULL GROUP BY l2.organization_id) e"
        " WHERE l.organization_id = e.organization_id"
    )


def downgrade() -> None:
    op.drop_column("usage_daily_summaries", "unpriced_count")
    op.drop_column("usage_limits", "unpriced_events_period")
    op.drop_index("ix_usage_events_unpriced", table_name="usage_events")
    op.drop_column("usage_events", "unpriced_reason")
    op.execute("UPDATE usage_events SET cost_usd = 0 WHERE cost_usd IS NULL")
    op.alter_column("usage_events", "cost_usd", nullable=False, server_default="0")
    op.drop_column("usage_events", "cache_write_1h_tokens")

    op.execute(
        "DELETE FROM model_pricing WHERE origin <> 'catalogue' OR retired_at IS NOT NULL"
        " OR above_input_tokens > 0 OR daily_from_minute <> 0 OR daily_until_minute <> 1440"
    )
    op.drop_index("uq_model_pricing_live", table_name="model_pricing")
    op.create_unique_constraint(
        "uq_model_pricing_provider", "model_pricing", ["provider", "model", "effective_from"]
    )
    op.drop_constraint(op.f("ck_model_pricing_daily_window_valid"), "model_pricing", type_="check")
    op.drop_constraint(op.f("ck_model_pricing_tier_nonnegative"), "model_pricing", type_="check")
    op.drop_constraint(op.f("ck_model_pricing_origin_known"), "model_pricing", type_="check")
    for column in (
        "retired_at",
        "origin",
        "per_request_usd",
        "cache_write_1h_per_mtok",
        "daily_until_minute",
        "daily_from_minute",
    ):
        op.drop_column("model_pricing", column)
    op.drop_column("model_pricing", "above_input_tokens")
    for column in PRICE_COLUMNS:
        op.alter_column(
            "model_pricing",
            column,
            type_=OLD_PRICE,
            existing_type=PRICE,
            postgresql_using=f"round({column}, 6)",
        )
