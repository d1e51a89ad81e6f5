"""Grants paid from the cache: usage_limits.grants_pending, grants_pending_period, grants_cached_at.

The consumer's batch pays what usage beyond a plan takes from credit grants out of the cached
live remaining and keeps it as grants_pending, owed by the grants live at grants_cached_at
(in burn order); every writer of grants takes it from the rows first
(biz2bricks_core.credits: owed, FLUSH_GRANTS). Readers subtract what the rows owe, so
usage_reserve_tokens is reinstalled with the new reading of the live grants, and returns the
counters' period_end too (a refused hold's 429 carries Retry-After, as a refused token check's
does): a frozen copy of biz2bricks_core.holds.function_ddl("usage_reserve_tokens"). A new
result column means DROP and CREATE (callers hold no reference to the function). The columns are added with
defaults PostgreSQL stores once (no table rewrite; grants_cached_at takes the migration's
time, then new rows get NULL); a brief lock of usage_limits.

Cut-over, not rolling: code older than this revision rebuilds the grants' cache from the rows
without subtracting what they owe, so stop every writer of the counters and grants (the
consumers, the rollup jobs, and the services that grant or void credits) before upgrading,
and start only the new code after it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROP_RESERVE_TOKENS = "DROP FUNCTION usage_reserve_tokens(uuid, bigint, double precision)"
USAGE_RESERVE_TOKENS = """CREATE OR REPLACE FUNCTION usage_reserve_tokens(p_org uuid, p_tokens bigint, p_ttl_s double precision) RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint, allowance bigint, reason text, expires_at timestamptz, expired_holds integer, period_end timestamptz) LANGUAGE plpgsql VOLATILE AS $fn$
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
        l.soft_limit AS soft_limit, l.period_end AS period_end INTO lim;
    IF FOUND THEN
        INSERT INTO usage_token_holds (organization_id, tokens, expires_at)
        VALUES (p_org, p_tokens, v_expires) RETURNING id INTO v_id;
        RETURN QUERY SELECT true, v_id, lim.used, lim.reserved, lim.allowance,
            usage_token_reason(lim.used, lim.reserved - p_tokens, p_tokens, lim.allowance,
                lim.soft_limit), v_expires, 0, lim.period_end;
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
            NULL::bigint, 'unlimited'::text, NULL::timestamptz, 0, lim.period_end;
        RETURN;
    END IF;
    PERFORM 1 FROM usage_limits l WHERE l.organization_id = p_org FOR UPDATE;
    -- A statement after the lock: it sees every grant and hold committed before it.
    SELECT l.token_limit, l.soft_limit, l.period_end, l.tokens_used_period,
        l.grants_consumed_period, l.tokens_reserved, l.holds_next_expiry,
        CASE WHEN (l.grants_next_change IS NULL OR l.grants_next_change > now()) THEN l.grants_remaining ELSE (SELECT coalesce(sum(s.remaining - s.owed), 0) FROM (SELECT g.*, CASE WHEN (g.voided_at IS NULL AND g.effective_at <= l.grants_cached_at AND (g.expires_at IS NULL OR l.grants_cached_at < g.expires_at)) THEN least(g.remaining, greatest(l.grants_pending - coalesce(sum(g.remaining) FILTER (WHERE (g.voided_at IS NULL AND g.effective_at <= l.grants_cached_at AND (g.expires_at IS NULL OR l.grants_cached_at < g.expires_at))) OVER (ORDER BY g.priority, g.expires_at NULLS LAST, g.created_at, g.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0), 0)) ELSE 0 END AS owed FROM credit_grants g WHERE g.organization_id = l.organization_id AND g.remaining > 0 AND g.voided_at IS NULL) s WHERE (s.voided_at IS NULL AND s.effective_at <= now() AND (s.expires_at IS NULL OR now() < s.expires_at))) END AS live INTO lim
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
            NULL::timestamptz, v_expired, lim.period_end;
        RETURN;
    END IF;
    INSERT INTO usage_token_holds (organization_id, tokens, expires_at)
    VALUES (p_org, p_tokens, v_expires) RETURNING id INTO v_id;
    UPDATE usage_limits l SET tokens_reserved = v_reserved + p_tokens,
        holds_next_expiry = least(v_next, v_expires)
    WHERE l.organization_id = p_org;
    RETURN QUERY SELECT true, v_id, v_used, v_reserved + p_tokens, v_allowance, v_reason,
        v_expires, v_expired, lim.period_end;
END
$fn$
"""

USAGE_RESERVE_TOKENS_0008 = """CREATE OR REPLACE FUNCTION usage_reserve_tokens(p_org uuid, p_tokens bigint, p_ttl_s double precision) RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint, allowance bigint, reason text, expires_at timestamptz, expired_holds integer) LANGUAGE plpgsql VOLATILE AS $fn$
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


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.add_column(
        "usage_limits",
        sa.Column("grants_pending", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("usage_limits", sa.Column("grants_pending_period", sa.DateTime(timezone=True)))
    # A non-volatile default is stored once, not written into every row; then dropped.
    op.add_column(
        "usage_limits",
        sa.Column("grants_cached_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
    )
    op.alter_column("usage_limits", "grants_cached_at", server_default=None)
    op.create_check_constraint(
        op.f("ck_usage_limits_grants_pending_nonnegative"), "usage_limits", "grants_pending >= 0"
    )
    op.execute(DROP_RESERVE_TOKENS)
    op.execute(USAGE_RESERVE_TOKENS)


def downgrade() -> None:
    # What is owed goes to the rows first (the statement of 0011's FLUSH_GRANTS needs the
    # columns): downgrade only with the consumers stopped and after `biz2bricks-rollup run`,
    # which flushes every organization; refuse otherwise rather than lose it.
    op.execute("LOCK TABLE usage_limits IN ACCESS EXCLUSIVE MODE")  # no batch can owe more
    owed = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM usage_limits WHERE grants_pending > 0"))
        .scalar()
    )
    if owed:
        raise RuntimeError(
            f"{owed} organizations have credit-grant tokens not yet taken from their grants:"
            " run `biz2bricks-rollup run` (it flushes them) with the consumers stopped, then"
            " downgrade"
        )
    op.execute(DROP_RESERVE_TOKENS)
    op.execute(USAGE_RESERVE_TOKENS_0008)
    op.drop_constraint(
        op.f("ck_usage_limits_grants_pending_nonnegative"), "usage_limits", type_="check"
    )
    op.drop_column("usage_limits", "grants_cached_at")
    op.drop_column("usage_limits", "grants_pending_period")
    op.drop_column("usage_limits", "grants_pending")
