"""Plans and prices: subscription_plans and the model_pricing catalogue."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from biz2bricks_core.models._base import Base, Money, PricePerMTok


class SubscriptionPlanModel(Base):
    """A plan's limits. A null limit means unlimited."""

    __tablename__ = "subscription_plans"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    monthly_price_usd: Mapped[Decimal] = mapped_column(Money)
    token_limit: Mapped[int | None] = mapped_column(BigInteger)
    storage_limit_bytes: Mapped[int | None] = mapped_column(BigInteger)
    soft_limit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    period_unit: Mapped[str] = mapped_column(String(8), server_default="month")
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Percent of the allowance at which a usage alert is written (biz2bricks_core.alerts).
    alert_thresholds_pct: Mapped[list[int]] = mapped_column(
        ARRAY(Integer), server_default=text("'{50,80,100}'")
    )

    __table_args__ = (
        CheckConstraint("period_unit IN ('month', 'year')", name="period_unit_known"),
    )


class ModelPricingModel(Base):
    """USD per million tokens of one model and tier, in force from ``effective_from``.

    Rows are never updated: a changed price is a new row and the old one gets ``retired_at``,
    so an event's cost stays reproducible from its ``pricing_id``. ``origin`` is
    ``catalogue`` (written by the price catalogue migrations) or ``operator`` (negotiated
    prices, fine-tuned models; they win over the catalogue). See biz2bricks_core.pricing.
    """

    __tablename__ = "model_pricing"
    __table_args__ = (
        Index(
            "uq_model_pricing_live",
            "origin",
            "provider",
            "model",
            "effective_from",
            "above_input_tokens",
            "daily_from_minute",
            "variant",
            unique=True,
            postgresql_where=text("retired_at IS NULL"),
        ),
        CheckConstraint("origin IN ('catalogue', 'operator')", name="origin_known"),
        CheckConstraint("above_input_tokens >= 0", name="tier_nonnegative"),
        CheckConstraint(
            "daily_from_minute BETWEEN 0 AND 1439 AND daily_until_minute BETWEEN 1 AND 1440",
            name="daily_window_valid",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    provider: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    effective_from: Mapped[datetime]
    # Long-context tier: the row prices calls whose input_tokens exceed this (0: base tier).
    above_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Time-of-day price: applies in [from, until) minutes of the UTC day (wraps past midnight).
    daily_from_minute: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    daily_until_minute: Mapped[int] = mapped_column(SmallInteger, server_default="1440")
    input_per_mtok: Mapped[Decimal] = mapped_column(PricePerMTok)
    output_per_mtok: Mapped[Decimal] = mapped_column(PricePerMTok)
    cache_read_per_mtok: Mapped[Decimal | None] = mapped_column(PricePerMTok)
    cache_write_per_mtok: Mapped[Decimal | None] = mapped_column(PricePerMTok)
    cache_write_1h_per_mtok: Mapped[Decimal | None] = mapped_column(PricePerMTok)
    per_request_usd: Mapped[Decimal | None] = mapped_column(PricePerMTok)
    # USD per 1,000 web-search requests of the call (server-side tool use).
    web_search_per_k_usd: Mapped[Decimal | None] = mapped_column(PricePerMTok)
    # The price context the row prices (biz2bricks_core.pricing.price_variant; "" standard).
    variant: Mapped[str] = mapped_column(String(200), server_default="")
    origin: Mapped[str] = mapped_column(String(16), server_default="catalogue")
    source: Mapped[str | None] = mapped_column(String(200))
    retired_at: Mapped[datetime | None]
