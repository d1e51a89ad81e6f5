"""Price context: batch, service tier, speed and route variants; web-search fees; by variant.

- model_pricing: ``variant`` (biz2bricks_core.pricing.price_variant; '' the standard price)
  joins the live unique key, and ``web_search_per_k_usd`` prices web-search requests. The
  catalogue of genai-prices 0.2.3 in the v2 format (its price variants and the reviewed
  operator supplements of biz2bricks_core.price_supplements) is applied with
  ``sync_catalogue``: rows whose prices did not change keep their ids.
- usage_events: ``price_variant`` and ``web_search_requests``. usage_events is partitioned
  (0007): the columns are added on the parent (PostgreSQL adds them to every partition), with
  constant defaults, so no partition is rewritten.
- usage_daily_summaries: ``price_variant`` joins the primary key (it changes the price), so
  the summaries and the usage query can group by it. Existing rows are standard ('').

Events stored before this revision are standard calls without web searches, as they were
priced. Downgrade drops the variant rows and columns; summaries of variant calls merge.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

from biz2bricks_core.price_catalogue import load_rows, sync_catalogue

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CATALOGUE = (
    Path(__file__).resolve().parent.parent / "data" / "pricing" / "genai-prices-0.2.3-v2.json"
)
PRICE = sa.Numeric(30, 18)
LIVE_KEY = ["origin", "provider", "model", "effective_from", "above_input_tokens"]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.add_column("model_pricing", sa.Column("web_search_per_k_usd", PRICE, nullable=True))
    op.add_column(
        "model_pricing",
        sa.Column("variant", sa.String(length=200), server_default="", nullable=False),
    )
    op.drop_index("uq_model_pricing_live", table_name="model_pricing")
    op.create_index(
        "uq_model_pricing_live",
        "model_pricing",
        [*LIVE_KEY, "daily_from_minute", "variant"],
        unique=True,
        postgresql_where=sa.text("retired_at IS NULL"),
    )
    sync_catalogue(op.get_bind(), load_rows(CATALOGUE))
    op.add_column(
        "usage_events",
        sa.Column("price_variant", sa.String(length=200), server_default="", nullable=False),
    )
    op.add_column(
        "usage_events",
        sa.Column("web_search_requests", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_daily_summaries",
        sa.Column("price_variant", sa.String(length=200), server_default="", nullable=False),
    )
    op.drop_constraint("pk_usage_daily_summaries", "usage_daily_summaries", type_="primary")
    op.create_primary_key(
        "pk_usage_daily_summaries",
        "usage_daily_summaries",
        ["organization_id", "day", "provider", "model", "price_variant"],
    )


def downgrade() -> None:
    op.execute(
        "INSERT INTO usage_daily_summaries (organization_id, day, provider, model, price_variant,"
        " request_count, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
        " cost_usd, unpriced_count, updated_at)"
        " SELECT organization_id, day, provider, model, '', sum(request_count),"
        " sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),"
        " sum(cache_write_tokens), sum(cost_usd), sum(unpriced_count), now()"
        " FROM usage_daily_summaries WHERE price_variant <> ''"
        " GROUP BY organization_id, day, provider, model"
        " ON CONFLICT (organization_id, day, provider, model, price_variant) DO UPDATE SET"
        " request_count = usage_daily_summaries.request_count + excluded.request_count,"
        " input_tokens = usage_daily_summaries.input_tokens + excluded.input_tokens,"
        " output_tokens = usage_daily_summaries.output_tokens + excluded.output_tokens,"
        " cache_read_tokens = usage_daily_summaries.cache_read_tokens"
        " + excluded.cache_read_tokens,"
        " cache_write_tokens = usage_daily_summaries.cache_write_tokens"
        " + excluded.cache_write_tokens,"
        " cost_usd = usage_daily_summaries.cost_usd + excluded.cost_usd,"
        " unpriced_count = usage_daily_summaries.unpriced_count + excluded.unpriced_count"
    )
    op.execute("DELETE FROM usage_daily_summaries WHERE price_variant <> ''")
    op.drop_constraint("pk_usage_daily_summaries", "usage_daily_summaries", type_="primary")
    op.create_primary_key(
        "pk_usage_daily_summaries",
        "usage_daily_summaries",
        ["organization_id", "day", "provider", "model"],
    )
    op.drop_column("usage_daily_summaries", "price_variant")
    op.drop_column("usage_events", "web_search_requests")
    op.drop_column("usage_events", "price_variant")
    op.execute("DELETE FROM model_pricing WHERE variant <> ''")
    op.drop_index("uq_model_pricing_live", table_name="model_pricing")
    op.create_index(
        "uq_model_pricing_live",
        "model_pricing",
        [*LIVE_KEY, "daily_from_minute"],
        unique=True,
        postgresql_where=sa.text("retired_at IS NULL"),
    )
    op.drop_column("model_pricing", "variant")
    op.drop_column("model_pricing", "web_search_per_k_usd")
