"""Credit grants: credits with an effective date, an expiry and a priority, burned as usage
goes beyond the plan; credits_tokens becomes one grant per organization.

- credit_grants and credit_ledger (every grant, consumption, expiry and void).
- usage_limits: grants_consumed_period (what grants paid for in the period), grants_remaining
  and grants_next_change (the cache of the live grants' remaining), replacing credits_tokens.
- Today's credits become one grant per organization, without expiry, live at once. The
  allowance is kept exactly: what the current period already used beyond its plan is paid
  from that grant now (a consume row in the ledger), as the new burn would have paid it. Usage
  beyond the plan in a period that has already ended (its pay-at-roll not yet run) is not
  charged: the old rule would have charged it at the next event, the new one never looks back.
- usage_reserve_tokens reads the new allowance (a frozen copy of
  biz2bricks_core.holds.function_ddl at this revision; a test compares it with the live text).

Downgrade puts each organization's live grants and this period's consumption back into
credits_tokens (the allowance again) and drops the grants.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:16:47
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREDITS_TO_GRANTS = """
WITH src AS (
    SELECT organization_id, period_start, credits_tokens AS credits,
        CASE WHEN token_limit IS NULL OR now() >= period_end THEN 0
            ELSE least(greatest(tokens_used_period - token_limit, 0), credits_tokens)
        END AS consumed
    FROM usage_limits WHERE credits_tokens > 0
),
made AS (
    INSERT INTO credit_grants (organization_id, tokens, remaining, priority, reason)
    SELECT organization_id, credits, credits - consumed, 10, 'credits_tokens before grants'
    FROM src ORDER BY organization_id
    RETURNING id, organization_id, tokens
),
ledger AS (
    INSERT INTO credit_ledger (organization_id, grant_id, kind, tokens, period_start)
    SELECT m.organization_id, m.id, k.kind, k.tokens, k.period_start
    FROM made m JOIN src s USING (organization_id)
    CROSS JOIN LATERAL (VALUES ('grant', m.tokens, NULL::timestamptz),
                               ('consume', s.consumed, s.period_start)) AS k(kind, tokens, period_start)
    WHERE k.kind = 'grant' OR k.tokens > 0
)
UPDATE usage_limits l SET grants_consumed_period = s.consumed,
    grants_remaining = s.credits - s.consumed, grants_next_change = NULL
FROM src s WHERE l.organization_id = s.organization_id
"""

GRANTS_TO_CREDITS = """
UPDATE usage_limits l SET credits_tokens =
    CASE WHEN now() >= l.period_end THEN 0 ELSE l.grants_consumed_period END
    + (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants g
       WHERE g.organization_id = l.organization_id AND g.voided_at IS NULL
         AND g.effective_at <= now() AND (g.expires_at IS NULL OR now() < g.expires_at))
"""

# Frozen copy of biz2bricks_core.holds.function_ddl("usage_reserve_tokens") at this revision.
USAGE_RESERVE_TOKENS = """CREATE OR REPLACE FUNCTION usage_reserve_tokens(p_org uuid, p_tokens bigint, p_ttl_s double precision) RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint, allowance bigint, reason text, expires_at timestamptz, expired_holds integer) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    lim record;
    v_used bigint;
    v_reserved bigint;
    v_allowance bigint;
    v_live bigint;
    v_reason text;
    v_next timestamptz;
    v_expired integer := 0;
    v_expired_tokens bigint := 0;
    v_id uuid;
    v_expires timestamptz := now() + make_interval(secs => p_ttl_s);
BEGIN
    -- Fast path, one statement: a limited plan, no counted hold expired, no grant started or
    -- ended since the grants' cache was written, and the call fits.
    UPDATE usage_limits l SET tokens_reserved = l.tokens_reserved + p_tokens,
        holds_next_expiry = least(l.holds_next_expiry, v_expires)
    WHERE l.organization_id = p_org AND l.token_limit IS NOT NULL
        AND (l.holds_next_expiry IS NULL OR l.holds_next_expiry > now())
        AND (l.grants_next_change IS NULL OR l.grants_next_change > now())
        AND usage_token_reason(
            CASE WHEN now() >= l.period_end THEN 0 ELSE l.tokens_used_period END,
            l.tokens_reserved, p_tokens, (l.token_limit + CASE WHEN now() >= l.period_end THEN 0 ELSE l.grants_consumed_period END + l.grants_remaining), l.soft_limit
        ) <> 'token_limit_exceeded'
    RETURNING CASE WHEN now() >= l.period_end THEN 0 ELSE l.tokens_used_period END AS used,
        l.tokens_reserved AS reserved, (l.token_limit + CASE WHEN now() >= l.period_end THEN 0 ELSE l.grants_consumed_period END + l.grants_remaining) AS allowance,
        l.soft_limit AS soft_limit INTO lim;
    IF FOUND THEN
        INSERT INTO usage_token_holds (organization_id, tokens, expires_at)
        VALUES (p_org, p_tokens, v_expires) RETURNING id INTO v_id;
        RETURN QUERY SELECT true, v_id, lim.used, lim.reserved, lim.allowance,
            usage_token_reason(lim.used, lim.reserved - p_tokens, p_tokens, lim.allowance,
                lim.soft_limit), v_expires, 0;
        RETURN;
    END IF;
    -- Otherwise: unknown organization, unlimited plan, holds to sweep, grants that started or
    -- ended, or a refusal.
    SELECT l.token_limit, l.soft_limit, l.period_end, l.tokens_used_period,
        l.tokens_reserved INTO lim
    FROM usage_limits l WHERE l.organization_id = p_org;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF lim.token_limit IS NULL THEN  -- unlimited: nothing to hold, no lock taken
        RETURN QUERY SELECT true, NULL::uuid, CASE WHEN now() >= lim.period_end THEN 0 ELSE lim.tokens_used_period END, lim.tokens_reserved,
            NULL::bigint, 'unlimited'::text, NULL::timestamptz, 0;
        RETURN;
    END IF;
    PERFORM 1 FROM usage_limits l WHERE l.organization_id = p_org FOR UPDATE;
    -- A statement after the lock: it sees every grant and hold committed before it.
    SELECT l.token_limit, l.soft_limit, l.period_end, l.tokens_used_period,
        l.grants_consumed_period, l.tokens_reserved, l.holds_next_expiry,
        CASE WHEN (l.grants_next_change IS NULL OR l.grants_next_change > now()) THEN l.grants_remaining ELSE (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants g WHERE g.organization_id = l.organization_id AND g.remaining > 0 AND (g.voided_at IS NULL AND g.effective_at <= now() AND (g.expires_at IS NULL OR now() < g.expires_at))) END AS live INTO lim
    FROM usage_limits l WHERE l.organization_id = p_org;
    v_live := lim.live;
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
    v_allowance := (lim.token_limit + CASE WHEN now() >= lim.period_end THEN 0 ELSE lim.grants_consumed_period END + v_live);
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

# The body migration 0005 installed, for the downgrade.
USAGE_RESERVE_TOKENS_0005 = """CREATE OR REPLACE FUNCTION usage_reserve_tokens(p_org uuid, p_tokens bigint, p_ttl_s double precision) RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint, allowance bigint, reason text, expires_at timestamptz, expired_holds integer) LANGUAGE plpgsql VOLATILE AS $fn$
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


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="10", nullable=False),
        sa.Column(
            "effective_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "expires_at IS NULL OR expires_at > effective_at",
            name=op.f("ck_credit_grants_expiry_after_start"),
        ),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= tokens",
            name=op.f("ck_credit_grants_remaining_in_range"),
        ),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_credit_grants_tokens_positive")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_grants_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    op.create_index(
        "ix_credit_grants_open",
        "credit_grants",
        ["organization_id", "priority"],
        unique=False,
        postgresql_where=sa.text("remaining > 0 AND voided_at IS NULL"),
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("grant_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('grant', 'consume', 'restore', 'expire', 'void')",
            name=op.f("ck_credit_ledger_kind_known"),
        ),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_credit_ledger_tokens_nonnegative")),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["credit_grants.id"],
            name=op.f("fk_credit_ledger_grant_id_credit_grants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_credit_ledger_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
    )
    op.create_index(
        "ix_credit_ledger_organization_id",
        "credit_ledger",
        ["organization_id", "period_start"],
        unique=False,
    )
    op.create_index(
        "uq_credit_ledger_grant_end",
        "credit_ledger",
        ["grant_id"],
        unique=True,
        postgresql_where=sa.text("kind IN ('expire', 'void')"),
    )
    op.add_column(
        "usage_limits",
        sa.Column("grants_consumed_period", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_limits",
        sa.Column("grants_remaining", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_limits", sa.Column("grants_next_change", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_check_constraint(
        op.f("ck_usage_limits_grants_consumed_nonnegative"),
        "usage_limits",
        "grants_consumed_period >= 0",
    )
    op.create_check_constraint(
        op.f("ck_usage_limits_grants_remaining_nonnegative"),
        "usage_limits",
        "grants_remaining >= 0",
    )
    op.execute(CREDITS_TO_GRANTS)
    op.drop_column("usage_limits", "credits_tokens")
    op.execute(USAGE_RESERVE_TOKENS)


def downgrade() -> None:
    op.add_column(
        "usage_limits",
        sa.Column(
            "credits_tokens",
            sa.BIGINT(),
            server_default=sa.text("'0'::bigint"),
            autoincrement=False,
            nullable=False,
        ),
    )
    op.execute(GRANTS_TO_CREDITS)
    op.execute(USAGE_RESERVE_TOKENS_0005)
    op.drop_constraint(
        op.f("ck_usage_limits_grants_consumed_nonnegative"), "usage_limits", type_="check"
    )
    op.drop_constraint(
        op.f("ck_usage_limits_grants_remaining_nonnegative"), "usage_limits", type_="check"
    )
    op.drop_column("usage_limits", "grants_next_change")
    op.drop_column("usage_limits", "grants_remaining")
    op.drop_column("usage_limits", "grants_consumed_period")
    op.drop_index(
        "uq_credit_ledger_grant_end",
        table_name="credit_ledger",
        postgresql_where=sa.text("kind IN ('expire', 'void')"),
    )
    op.drop_index("ix_credit_ledger_organization_id", table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_index(
        "ix_credit_grants_open",
        table_name="credit_grants",
        postgresql_where=sa.text("remaining > 0 AND voided_at IS NULL"),
    )
    op.drop_table("credit_grants")
