"""Usage: the per-organization counters, events, rejects, summaries, holds and alerts."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from biz2bricks_core.event_ids import NEW_ID_SQL
from biz2bricks_core.late_events import late_arrival_sql
from biz2bricks_core.models._base import Base, Money, _created_at, _org_fk

USAGE_LIMITS_FILLFACTOR = 50


class UsageLimitsModel(Base):
    """One row per organization: plan limits and the precomputed counters of its current period."""

    __tablename__ = "usage_limits"
    __table_args__ = (
        CheckConstraint("tokens_used_period >= 0", name="tokens_nonnegative"),
        CheckConstraint("storage_used_bytes >= 0", name="storage_nonnegative"),
        CheckConstraint("grants_consumed_period >= 0", name="grants_consumed_nonnegative"),
        CheckConstraint("grants_remaining >= 0", name="grants_remaining_nonnegative"),
        CheckConstraint("grants_pending >= 0", name="grants_pending_nonnegative"),
        CheckConstraint("tokens_reserved >= 0", name="reserved_nonnegative"),
        CheckConstraint("period_end > period_start", name="period_ordered"),
        CheckConstraint("period_unit IN ('month', 'year')", name="period_unit_known"),
        # Every committed batch rewrites its organizations' rows: free space on each page lets
        # PostgreSQL update them in place (HOT), without touching the index or bloating.
        {"postgresql_with": {"fillfactor": USAGE_LIMITS_FILLFACTOR}},
    )

    organization_id: Mapped[uuid.UUID] = _org_fk(primary_key=True)
    plan: Mapped[str] = mapped_column(ForeignKey("subscription_plans.name"))
    token_limit: Mapped[int | None] = mapped_column(BigInteger)
    soft_limit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    period_unit: Mapped[str] = mapped_column(String(8), server_default="month")
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    tokens_used_period: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd_period: Mapped[Decimal] = mapped_column(Money, server_default="0")
    # Events of the period without a price: cost_usd_period leaves them out.
    unpriced_events_period: Mapped[int] = mapped_column(BigInteger, server_default="0")
    storage_used_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    storage_limit_bytes: Mapped[int | None] = mapped_column(BigInteger)
    counters_updated_at: Mapped[datetime | None]
    # Sum of the tokens of holds in state 'live' (biz2bricks_core.holds keeps it exact), and a
    # lower bound of their earliest expiry: while it lies in the future, no counted hold expired.
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, server_default="0")
    holds_next_expiry: Mapped[datetime | None]
    # What credit grants paid for in this period (the consume rows of credit_ledger), and a
    # cache of what the live grants still hold, exact while grants_next_change (the earliest
    # future start or end of a grant with tokens left) lies ahead (biz2bricks_core.credits).
    grants_consumed_period: Mapped[int] = mapped_column(BigInteger, server_default="0")
    grants_remaining: Mapped[int] = mapped_column(BigInteger, server_default="0")
    grants_next_change: Mapped[datetime | None]
    # What the batch path paid from that cache and has not yet taken from the grant rows or
    # written to the ledger, the period it was paid in, and when the cache was computed (the
    # grants live then owe it, in burn order: biz2bricks_core.credits.owed).
    grants_pending: Mapped[int] = mapped_column(BigInteger, server_default="0")
    grants_pending_period: Mapped[datetime | None]
    grants_cached_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class UsageEventModel(Base):
    """One row per accepted usage event; ``event_id`` makes redeliveries harmless.

    Partitioned by range of ``id_month``, the month the event id carries (biz2bricks_core.
    event_ids; biz2bricks_core.event_partitions creates and drops the partitions): the key
    is a function of event_id alone, so (event_id, id_month) is unique per event_id.
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_org_occurred", "organization_id", "occurred_at"),
        # BRIN: both columns grow with insertion order, and a BRIN index costs inserts little.
        Index("ix_usage_events_received_brin", "received_at", postgresql_using="brin"),
        Index("ix_usage_events_occurred_brin", "occurred_at", postgresql_using="brin"),
        # Few rows: what `biz2bricks-rollup reprice --unpriced` looks for.
        Index("ix_usage_events_unpriced", "occurred_at", postgresql_where=text("cost_usd IS NULL")),
        # Few rows: the late arrivals (biz2bricks_core.late_events), which the usage query
        # checks against each summarised day's watermark without reading the day's events.
        Index(
            "ix_usage_events_late",
            "organization_id",
            "occurred_at",
            postgresql_where=text(late_arrival_sql("received_at", "occurred_at")),
        ),
        {"postgresql_partition_by": "RANGE (id_month)"},
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # The partition key: event_id_month(event_id), written by the consumer's statement.
    id_month: Mapped[date] = mapped_column(Date, primary_key=True)
    # No foreign key on this append-only fact table: the check would cost a fifth of every
    # insert, and the consumer inserts only events of organizations it has just locked in
    # usage_limits (which does reference organizations). Usage outlives a deleted tenant.
    organization_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    provider: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # NULL when no price row applies (never 0 for "unknown"); unpriced_reason says why.
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    unpriced_reason: Mapped[str | None] = mapped_column(String(32))
    # No foreign key: model_pricing is append-only and the check would cost a third of the
    # insert; the consumer writes only ids it read from that table.
    pricing_id: Mapped[int | None] = mapped_column(Integer)
    operation: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    # A voided event stays (append-only) and counts nowhere; usage_corrections says why.
    voided_at: Mapped[datetime | None]
    # The event this one amends (a correction of a voided original).
    amends: Mapped[uuid.UUID | None]
    # The token hold the event carried (settled by it if the hold was live; no foreign key,
    # since a settled hold is deleted and the event is its record).
    reservation_id: Mapped[uuid.UUID | None]
    # The call's price context (biz2bricks_core.pricing.price_variant; "" standard) and its
    # web-search requests: both select and enter its price.
    price_variant: Mapped[str] = mapped_column(String(200), server_default="")
    web_search_requests: Mapped[int] = mapped_column(BigInteger, server_default="0")


class UsageEventRejectModel(Base):
    """A message that could not become an event, kept whole with the reason."""

    __tablename__ = "usage_event_rejects"
    __table_args__ = (Index("ix_usage_event_rejects_received_at", "received_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    message_id: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    reason_code: Mapped[str] = mapped_column(String(32))
    raw_data: Mapped[bytes] = mapped_column(LargeBinary)
    attributes: Mapped[dict[str, Any] | None]
    delivery_attempt: Mapped[int | None] = mapped_column(Integer)
    published_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class UsageDailySummaryModel(Base):
    """Per organization, UTC day, provider and model: what the day's events add up to."""

    __tablename__ = "usage_daily_summaries"

    organization_id: Mapped[uuid.UUID] = _org_fk(primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    # The price context (batch, a service tier, ...): it changes the price, so it is a key.
    price_variant: Mapped[str] = mapped_column(String(200), primary_key=True, server_default="")
    request_count: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    # Sum over the priced events; unpriced_count says how many events it leaves out.
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    unpriced_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class UsageRollupDayModel(Base):
    """When each UTC day was last rolled up; events received later make the day due again."""

    __tablename__ = "usage_rollup_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    rolled_up_at: Mapped[datetime]
    # The newest received_at included by that run: events received after it are late arrivals.
    watermark: Mapped[datetime]
    rows_written: Mapped[int] = mapped_column(Integer)
    # The run also wrote the day's usage_daily_breakdowns (runs before migration 0010 did not).
    breakdowns: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class UsageDailyBreakdownModel(Base):
    """Per organization and UTC day, by ``dimensions`` (biz2bricks_core.late_events): per user,
    per operation, or per provider, model, user and operation: what the day's events add up to.

    Written by the rollup in the statement that writes usage_daily_summaries. A dimension's
    column is NULL where an event had none or the row does not keep that dimension, so the
    key is a unique index with NULLS NOT DISTINCT rather than a primary key. No foreign key, as
    on usage_events: every row derives from events.
    """

    __tablename__ = "usage_daily_breakdowns"
    # The mapper needs a primary key: the unique index's columns (the table has none).
    __table_args__ = (
        Index(
            "uq_usage_daily_breakdowns_key",
            "organization_id",
            "day",
            "dimensions",
            "provider",
            "model",
            "user_id",
            "operation",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
        CheckConstraint("dimensions IN (1, 2, 7)", name="dimensions_known"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column()
    day: Mapped[date] = mapped_column(Date)
    dimensions: Mapped[int] = mapped_column(SmallInteger)
    provider: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(100))
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    operation: Mapped[str | None] = mapped_column(String(200))
    request_count: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    # Sum over the priced events; unpriced_count says how many events it leaves out.
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    unpriced_count: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    # SQLAlchemy declares it on the base as an instance attribute: no ClassVar here.
    __mapper_args__ = {  # noqa: RUF012
        "primary_key": [
            organization_id,
            day,
            dimensions,
            provider,
            model,
            user_id,
            operation,
        ]
    }


class TokenHoldModel(Base):
    """Tokens reserved for one LLM call until its event settles them, it is released, or expires.

    A hold counts against the limit while its state is 'live' and ``expires_at`` is ahead. The
    event that settles a hold deletes it; released and expired holds stay, with ``ended_at``,
    until the rollup run prunes them (ROLLUP_HOLD_RETENTION_DAYS).
    """

    __tablename__ = "usage_token_holds"
    __table_args__ = (
        CheckConstraint("tokens >= 0", name="tokens_nonnegative"),
        CheckConstraint("state IN ('live', 'released', 'expired')", name="state_known"),
        Index(
            "ix_usage_token_holds_live",
            "organization_id",
            "expires_at",
            postgresql_where=text("state = 'live'"),
        ),
        # What the rollup's retention prune looks for (ended holds, oldest first).
        Index("ix_usage_token_holds_ended", "ended_at", postgresql_where=text("state <> 'live'")),
    )

    # Time-ordered (biz2bricks_core.event_ids.UUID_V7_FUNCTION): settled in time order too.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text(NEW_ID_SQL))
    # No foreign key, as on usage_events: holds are inserted only under a lock of the
    # organization's usage_limits row (which references organizations), on the request path.
    organization_id: Mapped[uuid.UUID]
    tokens: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), server_default="live")
    created_at: Mapped[datetime] = _created_at()
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class UsageAlertModel(Base):
    """One threshold of an organization's allowance crossed in one period, relayed to Pub/Sub."""

    __tablename__ = "usage_alerts"
    __table_args__ = (
        UniqueConstraint("organization_id", "period_start", "metric", "threshold_pct"),
        CheckConstraint("metric IN ('tokens')", name="metric_known"),
        Index(
            "ix_usage_alerts_unpublished",
            "created_at",
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    organization_id: Mapped[uuid.UUID] = _org_fk()
    period_start: Mapped[datetime]
    metric: Mapped[str] = mapped_column(String(16))
    threshold_pct: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(BigInteger)
    allowance: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created_at()
    published_at: Mapped[datetime | None]


class UsageEventArchiveModel(Base):
    """One row per UTC month of ``occurred_at`` written to the Parquet archive and verified.

    ``removed_at`` is set in the transaction that removed the month's rows from usage_events:
    months before the newest removed one are out of PostgreSQL (biz2bricks_rollup.archive).
    """

    __tablename__ = "usage_event_archive"

    month: Mapped[date] = mapped_column(Date, primary_key=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    files: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(Text)
    exported_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]
