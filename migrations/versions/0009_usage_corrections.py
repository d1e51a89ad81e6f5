"""Corrections and statements: usage_events.voided_at and amends, usage_corrections, and
usage_statements (closed statements, written once).

A void keeps the event row (voided_at set; it counts nowhere) and appends a usage_corrections
row saying what changed, why and who asked; an amend also points the replacing event at the
original (usage_events.amends). Both columns are nullable without default: added without
rewriting the table, giving up after 10 s rather than queueing the consumers' inserts behind
a long reader of usage_events (run it again).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 02:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.create_table(
        "usage_corrections",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("new_event_id", sa.UUID(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("grants_restored", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('void', 'amend')", name=op.f("ck_usage_corrections_kind_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_corrections")),
    )
    op.create_index(
        "ix_usage_corrections_created_brin",
        "usage_corrections",
        ["created_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_index(
        "ix_usage_corrections_organization_id",
        "usage_corrections",
        ["organization_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "usage_statements",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "organization_id", "period_start", name=op.f("pk_usage_statements")
        ),
    )
    op.add_column("usage_events", sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("usage_events", sa.Column("amends", sa.UUID(), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_events", "amends")
    op.drop_column("usage_events", "voided_at")
    op.drop_index("ix_usage_corrections_organization_id", table_name="usage_corrections")
    op.drop_index(
        "ix_usage_corrections_created_brin", table_name="usage_corrections", postgresql_using="brin"
    )
    op.drop_table("usage_corrections")
    op.drop_table("usage_statements")
