"""Token holds and usage alerts: usage_token_holds, usage_alerts, plan alert thresholds.

usage_limits gains tokens_reserved (the sum of live holds) and holds_next_expiry; the request
path reserves and releases through two PL/pgSQL functions, created here from a frozen copy of
biz2bricks_core.holds (a test checks the database runs exactly the module's bodies).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 22:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of biz2bricks_core.holds.function_ddl(...) as of this revision.
USAGE_TOKEN_REASON = """CREATE OR REPLACE FUNCTION usage_token_reason(p_used bigint, p_reserved bigint, p_estimate bigint, p_allowance bigint, p_soft_limit boolean) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT CASE
    WHEN p_allowance IS NULL THEN 'unlimited'
    WHEN p_used + p_reserved + p_estimate <= p_allowance THEN 'ok'
    WHEN p_soft_limit THEN 'soft_limit_exceeded'
    ELSE 'token_limit_exceeded' END
$fn$"""

USAGE_RESERVE_TOKENS = """CREATE OR REPLACE FUNCTION usage_reserve_tokens(p_org uuid, p_tokens bigint, p_ttl_s double precision) RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint, allowance bigint, reason text, expires_at timestamptz, expired_holds integer) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    lim record;
    v_used bigint;
    v_reserved bigint;
    v_allowance bigint;
    v_reason text;
    v_next timestamptz;
    v_expired integer := 0;
    v_expired_tokens bigint := 0;
    v_id uuid;
    v_expires timestamptz := now() + make_interval(secs => p_ttl_s);
BEGIN
    -- Fast path, one statement: a limited plan, no counted hold expired, and the call fits.
    UPDATE usage_limits l SET tokens_reserved = l.tokens_reserved + p_tokens,
        holds_next_expiry = least(l.holds_next_expiry, v_expires)
    WHERE l.organization_id = p_org AND l.token_limit IS NOT NULL
        AND (l.holds_next_expiry IS NULL OR l.holds_next_expiry > now())
        AND usage_token_reason(
            CASE WHEN now() >= l.period_end THEN 0 ELSE l.tokens_used_period END,
            l.tokens_reserved, p_tokens, l.token_limit + l.credits_tokens, l.soft_limit
        ) <> 'token_limit_exceeded'
    RETURNING CASE WHEN now() >= l.period_end THEN 0 ELSE l.tokens_used_period END AS used,
        l.tokens_reserved AS reserved, l.token_limit + l.credits_tokens AS allowance,
        l.soft_limit AS soft_limit INTO lim;
    IF FOUND THEN
        INSERT INTO usage_token_holds (organization_id, tokens, expires_at)
        VALUES (p_org, p_tokens, v_expires) RETURNING id INTO v_id;
        RETURN QUERY SELECT true, v_id, lim.used, lim.reserved, lim.allowance,
            usage_token_reason(lim.used, lim.reserved - p_tokens, p_tokens, lim.allowance,
                lim.soft_limit), v_expires, 0;
        RETURN;
    END IF;
    -- Otherwise: unknown organization, unlimited plan, holds to sweep, or a refusal.
    SELECT l.token_limit, l.credits_tokens, l.soft_limit, l.period_end, l.tokens_used_period,
        l.tokens_reserved, l.holds_next_expiry INTO lim
    FROM usage_limits l WHERE l.organization_id = p_org;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_used := CASE WHEN now() >= lim.period_end THEN 0 ELSE lim.tokens_used_period END;
    IF lim.token_limit IS NULL THEN  -- unlimited: nothing to hold, no lock taken
        RETURN QUERY SELECT true, NULL::uuid, v_used, lim.tokens_reserved, NULL::bigint,
            'unlimited'::text, NULL::timestamptz, 0;
        RETURN;
    END IF;
    SELECT l.token_limit, l.credits_tokens, l.soft_limit, l.period_end, l.tokens_used_period,
        l.tokens_reserved, l.holds_next_expiry INTO lim
    FROM usage_limits l WHERE l.organization_id = p_org FOR UPDATE;
    v_reserved := lim.tokens_reserved;
    v_next := lim.holds_next_expiry;
    IF v_next IS NOT NULL AND v_next <= now() THEN
        WITH ended AS (
            UPDATE usage_token_holds h SET state = 'expired', ended_at = now()
            WHERE h.organization_id = p_org AND h.state = 'live' AND h.expires_at <= now()
            RETURNING h.tokens)
        SELECT count(*), coalesce(sum(ended.tokens), 0) INTO v_expired, v_expired_tokens
        FROM ended;
        SELECT min(h.expires_at) INTO v_next FROM usage_token_holds h
        WHERE h.organization_id = p_org AND h.state = 'live';
        v_reserved := greatest(v_reserved - v_expired_tokens, 0);
    END IF;
    v_used := CASE WHEN now() >= lim.period_end THEN 0 ELSE lim.tokens_used_period END;
    v_allowance := lim.token_limit + lim.credits_tokens;
    v_reason := usage_token_reason(v_used, v_reserved, p_tokens, v_allowance, lim.soft_limit);
    IF v_reason = 'token_limit_exceeded' THEN
        IF v_expired > 0 THEN
            UPDATE usage_limits l SET tokens_reserved = v_reserved, holds_next_expiry = v_next
            WHERE l.organization_id = p_org;
        END IF;
        RETURN QUERY SELECT false, NULL::uuid, v_used, v_reserved, v_allowance, v_reason,
            NULL::timestamptz, v_expired;
        RETURN;
    END IF;
    INSERT INTO usage_token_holds (organization_id, tokens, expires_at)
    VALUES (p_org, p_tokens, v_expires) RETURNING id INTO v_id;
    UPDATE usage_limits l SET tokens_reserved = v_reserved + p_tokens,
        holds_next_expiry = least(v_next, v_expires)
    WHERE l.organization_id = p_org;
    RETURN QUERY SELECT true, v_id, v_used, v_reserved + p_tokens, v_allowance, v_reason,
        v_expires, v_expired;
END
$fn$"""

USAGE_RELEASE_TOKENS = """CREATE OR REPLACE FUNCTION usage_release_tokens(p_id uuid) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_org uuid;
    v_tokens bigint;
BEGIN
    SELECT h.organization_id INTO v_org FROM usage_token_holds h
    WHERE h.id = p_id AND h.state = 'live';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM usage_limits l WHERE l.organization_id = v_org FOR UPDATE;
    UPDATE usage_token_holds h SET state = 'released', ended_at = now()
    WHERE h.id = p_id AND h.state = 'live' RETURNING h.tokens INTO v_tokens;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE usage_limits l SET tokens_reserved = greatest(l.tokens_reserved - v_tokens, 0)
    WHERE l.organization_id = v_org;
    RETURN true;
END
$fn$"""


def upgrade() -> None:
    op.add_column(
        "subscription_plans",
        sa.Column(
            "alert_thresholds_pct",
            postgresql.ARRAY(sa.Integer()),
            server_default=sa.text("'{50,80,100}'"),
            nullable=False,
        ),
    )
    op.add_column(
        "usage_limits",
        sa.Column("tokens_reserved", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_limits",
        sa.Column("holds_next_expiry", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_check_constraint(
        op.f("ck_usage_limits_reserved_nonnegative"), "usage_limits", "tokens_reserved >= 0"
    )
    op.create_table(
        "usage_token_holds",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="live", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_usage_token_holds_tokens_nonnegative")),
        sa.CheckConstraint(
            "state IN ('live', 'released', 'expired')",
            name=op.f("ck_usage_token_holds_state_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_token_holds")),
    )
    op.create_index(
        "ix_usage_token_holds_live",
        "usage_token_holds",
        ["organization_id", "expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'live'"),
    )
    op.create_table(
        "usage_alerts",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("threshold_pct", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("allowance", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("metric IN ('tokens')", name=op.f("ck_usage_alerts_metric_known")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_alerts_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_alerts")),
        sa.UniqueConstraint(
            "organization_id",
            "period_start",
            "metric",
            "threshold_pct",
            name=op.f("uq_usage_alerts_organization_id"),
        ),
    )
    op.create_index(
        "ix_usage_alerts_unpublished",
        "usage_alerts",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    for ddl in (USAGE_TOKEN_REASON, USAGE_RESERVE_TOKENS, USAGE_RELEASE_TOKENS):
        op.execute(ddl)


def downgrade() -> None:
    op.execute("DROP FUNCTION usage_release_tokens(uuid)")
    op.execute("DROP FUNCTION usage_reserve_tokens(uuid, bigint, double precision)")
    op.execute("DROP FUNCTION usage_token_reason(bigint, bigint, bigint, bigint, boolean)")
    op.drop_index("ix_usage_alerts_unpublished", table_name="usage_alerts")
    op.drop_table("usage_alerts")
    op.drop_index("ix_usage_token_holds_live", table_name="usage_token_holds")
    op.drop_table("usage_token_holds")
    op.drop_constraint(op.f("ck_usage_limits_reserved_nonnegative"), "usage_limits", type_="check")
    op.drop_column("usage_limits", "holds_next_expiry")
    op.drop_column("usage_limits", "tokens_reserved")
    op.drop_column("subscription_plans", "alert_thresholds_pct")
