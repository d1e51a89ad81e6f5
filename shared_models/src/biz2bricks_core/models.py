"""SQLAlchemy 2.0 models of every table of the usage pipeline and the original library."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from biz2bricks_core.late_events import late_arrival_sql

__all__ = [
    "AuditLogModel",
    "Base",
    "CreditGrantModel",
    "CreditLedgerModel",
    "DocumentModel",
    "FolderModel",
    "ModelPricingModel",
    "OrganizationModel",
    "SubscriptionPlanModel",
    "TokenHoldModel",
    "UsageAlertModel",
    "UsageDailyBreakdownModel",
    "UsageDailySummaryModel",
    "UsageEventModel",
    "UsageEventRejectModel",
    "UsageLimitsModel",
    "UsageRollupDayModel",
    "UserModel",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 12 decimals: a single token at a 6-decimal price per million tokens is exact.
Money = Numeric(24, 12)
# 18 decimals: some catalogue prices are thirds and twelfths of a cent (OpenRouter's).
PricePerMTok = Numeric(30, 18)
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention, so migrations stay stable."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        uuid.UUID: UUID(as_uuid=True),
        datetime: Timestamp,
        dict[str, Any]: JSONB,
    }


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _org_fk(**kwargs: Any) -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), **kwargs)


class OrganizationModel(Base):
    """A tenant: every other tenant table carries its ``organization_id``."""

    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str | None] = mapped_column(String(100), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    @property
    def organization_id(self) -> uuid.UUID:
        """The tenant key, named as on every other table."""
        return self.id


class UserModel(Base):
    """A person in one organization."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("organization_id", "email"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    organization_id: Mapped[uuid.UUID] = _org_fk(index=True)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32), server_default="member")
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()


class FolderModel(Base):
    """A folder of documents; folders nest through ``parent_id``."""

    __tablename__ = "folders"
    __table_args__ = (
        UniqueConstraint("organization_id", "parent_id", "name"),
        Index("ix_folders_parent_id", "parent_id"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    organization_id: Mapped[uuid.UUID] = _org_fk(index=True)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created_at()

    parent: Mapped[FolderModel | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[FolderModel]] = relationship(back_populates="parent")


class DocumentModel(Base):
    """Metadata of a stored document; its bytes live in GCS. Live while ``deleted_at`` is null."""

    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("size_bytes >= 0", name="size_nonnegative"),
        Index(
            "ix_documents_org_live", "organization_id", postgresql_where=text("deleted_at IS NULL")
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    organization_id: Mapped[uuid.UUID] = _org_fk()
    folder_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("folders.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    gcs_uri: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created_at()
    deleted_at: Mapped[datetime | None]


class AuditLogModel(Base):
    """Who did what to which entity, for operations that change limits, credits or storage."""

    __tablename__ = "audit_logs"
    __table_args__ = (Index("ix_audit_logs_org_created", "organization_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
    user_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created_at()


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
    origin: Mapped[str] = mapped_column(String(16), server_default="catalogue")
    source: Mapped[str | None] = mapped_column(String(200))
    retired_at: Mapped[datetime | None]


USAGE_LIMITS_FILLFACTOR = 50


class UsageLimitsModel(Base):
    """One row per organization: plan limits and the precomputed counters of its current period."""

    __tablename__ = "usage_limits"
    __table_args__ = (
        CheckConstraint("tokens_used_period >= 0", name="tokens_nonnegative"),
        CheckConstraint("storage_used_bytes >= 0", name="storage_nonnegative"),
        CheckConstraint("grants_consumed_period >= 0", name="grants_consumed_nonnegative"),
        CheckConstraint("grants_remaining >= 0", name="grants_remaining_nonnegative"),
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
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class UsageEventModel(Base):
    """One row per accepted usage event; ``event_id`` makes redeliveries harmless."""

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
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
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
    # The token hold the event carried (settled by it if the hold was live; no foreign key,
    # since a settled hold is deleted and the event is its record).
    reservation_id: Mapped[uuid.UUID | None]


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
    # The run also wrote the day's usage_daily_breakdowns (runs before migration 0008 did not).
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

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
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


class CreditGrantModel(Base):
    """Tokens granted to an organization, live from ``effective_at`` until ``expires_at``.

    ``remaining`` falls as usage beyond the plan burns the grant (biz2bricks_core.credits) and
    goes to 0 when it is voided; an expiry leaves it as it was (the grant's breakage), and the
    grant simply stops counting.
    """

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= tokens", name="remaining_in_range"),
        CheckConstraint(
            "expires_at IS NULL OR expires_at > effective_at", name="expiry_after_start"
        ),
        # The burn and the live sum read an organization's grants with tokens left.
        Index(
            "ix_credit_grants_open",
            "organization_id",
            "priority",
            postgresql_where=text("remaining > 0 AND voided_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    organization_id: Mapped[uuid.UUID] = _org_fk()
    tokens: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer, server_default="10")
    effective_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None]
    voided_at: Mapped[datetime | None]
    void_reason: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()


class CreditLedgerModel(Base):
    """Every movement of a grant: granted, consumed by usage in a period, expired, voided.

    Appended only. Reconcile checks the counters against it: a period's consume rows sum to
    ``grants_consumed_period``, and a grant's tokens less its consume and void rows equal its
    ``remaining``. A grant ends once: one expire or void row at most.
    """

    __tablename__ = "credit_ledger"
    __table_args__ = (
        CheckConstraint("kind IN ('grant', 'consume', 'expire', 'void')", name="kind_known"),
        CheckConstraint("tokens >= 0", name="tokens_nonnegative"),
        Index(
            "uq_credit_ledger_grant_end",
            "grant_id",
            unique=True,
            postgresql_where=text("kind IN ('expire', 'void')"),
        ),
        Index("ix_credit_ledger_organization_id", "organization_id", "period_start"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("credit_grants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    tokens: Mapped[int] = mapped_column(BigInteger)
    # The counters' period when it was written (NULL for a grant row).
    period_start: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created_at()
