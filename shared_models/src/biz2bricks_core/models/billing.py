"""Billing: credit grants and their ledger, corrections of events, closed statements."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from biz2bricks_core.models._base import Base, Money, _created_at, _org_fk


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
    """Every movement of a grant: granted, consumed by usage in a period, restored by a void of
    that usage, expired, voided.

    Appended only. Reconcile checks the counters against it: a period's consume rows less its
    restore rows sum to ``grants_consumed_period``. A grant ends once: one expire or void row
    at most.
    """

    __tablename__ = "credit_ledger"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('grant', 'consume', 'restore', 'expire', 'void')", name="kind_known"
        ),
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


class UsageCorrectionModel(Base):
    """One correction of a stored event: a void (and, for an amend, the event replacing it).

    The event row stays; this row records what changed, why and who asked, what the void gave
    back to the counters of the period the event counted in, and when (the rollup rolls the
    event's day up again; statements book a correction of a closed period on the open one).
    """

    __tablename__ = "usage_corrections"
    __table_args__ = (
        CheckConstraint("kind IN ('void', 'amend')", name="kind_known"),
        Index("ix_usage_corrections_organization_id", "organization_id", "created_at"),
        Index("ix_usage_corrections_created_brin", "created_at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16))
    new_event_id: Mapped[uuid.UUID | None]
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    # Whether the event counted in the organization's current period when it was voided (its
    # tokens, cost and grant consumption were given back), and the grant tokens restored.
    counted: Mapped[bool] = mapped_column(Boolean)
    grants_restored: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = _created_at()


class UsageStatementModel(Base):
    """A closed statement: written once by the rollup run, as the text it was sent as, and never
    changed (biz2bricks_core.statements). Open statements are computed, not stored."""

    __tablename__ = "usage_statements"

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    period_end: Mapped[datetime]
    closed_at: Mapped[datetime]
    body: Mapped[str] = mapped_column(Text)
