"""Token holds: reserve an LLM call's estimate before it runs, settle it when its event lands.

Invariant kept by every statement here: ``usage_limits.tokens_reserved`` is the sum of the
tokens of the organization's holds in state 'live', and ``holds_next_expiry`` is at most the
earliest ``expires_at`` among them. So while ``holds_next_expiry`` lies in the future no counted
hold has expired and the counter is exact (an O(1) read); once it has passed, readers sum the
live rows instead and the next reservation sweeps the expired ones (state 'expired').

Every writer locks the organization's ``usage_limits`` row first and the hold rows after it
(the consumer's batch does the same), so they serialize per organization and cannot deadlock;
each statement of the PL/pgSQL functions then sees everything committed before the lock.

The functions below compose the rules of biz2bricks_core.periods (an ended period reads 0),
biz2bricks_core.credits (live grants) and biz2bricks_core.allowance (the allowance and the
token-limit rule, whose SQL twin is the function ``usage_token_reason``); migrations create them
from frozen copies of this text, and a test checks that the database runs exactly these bodies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from biz2bricks_core.allowance import TOKEN_REASON_BODY, allowance_sql, remaining
from biz2bricks_core.credits import grants_cache_valid_sql, live_grants_remaining_sql
from biz2bricks_core.periods import period_reading_sql

__all__ = [
    "FUNCTION_BODIES",
    "LIVE_RESERVED",
    "MAX_HOLD_TTL_S",
    "RELEASE",
    "RESERVE",
    "TokenHold",
    "function_ddl",
    "hold_from_row",
    "reserved_after_settle",
    "reserved_after_settle_sql",
    "settle_holds_sql",
]

MAX_HOLD_TTL_S: Final = 7 * 24 * 3600.0


# Composed from the rules' SQL twins. Migrations install frozen copies of these bodies (a test
# compares them with the database's), so a change to a rule here is a new migration.
_USED = period_reading_sql("l.tokens_used_period", "l.period_end")
_CONSUMED = period_reading_sql("l.grants_consumed_period", "l.period_end")
_LIM_USED = period_reading_sql("lim.tokens_used_period", "lim.period_end")
_LIM_CONSUMED = period_reading_sql("lim.grants_consumed_period", "lim.period_end")
# The fast path runs only while the grants' cache is exact, so it reads the cache.
_ALLOWANCE = allowance_sql("l.token_limit", _CONSUMED, "l.grants_remaining")
_LIM_ALLOWANCE = allowance_sql("lim.token_limit", _LIM_CONSUMED, "v_live")
_LIVE_GRANTS = live_grants_remaining_sql("l")

RESERVE_BODY: Final = f"""
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
        AND {grants_cache_valid_sql("l")}
        AND usage_token_reason(
            {_USED},
            l.tokens_reserved, p_tokens, {_ALLOWANCE}, l.soft_limit
        ) <> 'token_limit_exceeded'
    RETURNING {_USED} AS used,
        l.tokens_reserved AS reserved, {_ALLOWANCE} AS allowance,
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
        RETURN QUERY SELECT true, NULL::uuid, {_LIM_USED}, lim.tokens_reserved,
            NULL::bigint, 'unlimited'::text, NULL::timestamptz, 0, lim.period_end;
        RETURN;
    END IF;
    PERFORM 1 FROM usage_limits l WHERE l.organization_id = p_org FOR UPDATE;
    -- A statement after the lock: it sees every grant and hold committed before it.
    SELECT l.token_limit, l.soft_limit, l.period_end, l.tokens_used_period,
        l.grants_consumed_period, l.tokens_reserved, l.holds_next_expiry,
        {_LIVE_GRANTS} AS live INTO lim
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
    v_used := {_LIM_USED};
    v_allowance := {_LIM_ALLOWANCE};
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
"""

RELEASE_BODY: Final = """
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
"""

_SIGNATURES: Final = {
    "usage_token_reason": (
        "(p_used bigint, p_reserved bigint, p_estimate bigint, p_allowance bigint,"
        " p_soft_limit boolean) RETURNS text LANGUAGE sql IMMUTABLE"
    ),
    "usage_reserve_tokens": (
        "(p_org uuid, p_tokens bigint, p_ttl_s double precision)"
        " RETURNS TABLE (allowed boolean, reservation_id uuid, used bigint, reserved bigint,"
        " allowance bigint, reason text, expires_at timestamptz, expired_holds integer,"
        " period_end timestamptz)"
        " LANGUAGE plpgsql VOLATILE"
    ),
    "usage_release_tokens": "(p_id uuid) RETURNS boolean LANGUAGE plpgsql VOLATILE",
}

FUNCTION_BODIES: Final = {
    "usage_token_reason": TOKEN_REASON_BODY,
    "usage_reserve_tokens": RESERVE_BODY,
    "usage_release_tokens": RELEASE_BODY,
}


def function_ddl(name: str) -> str:
    """``CREATE OR REPLACE FUNCTION`` of one of the functions above."""
    return (
        f"CREATE OR REPLACE FUNCTION {name}{_SIGNATURES[name]} AS $fn${FUNCTION_BODIES[name]}$fn$"
    )


# One round trip each, on the request path.
RESERVE: Final = "SELECT * FROM usage_reserve_tokens($1, $2, $3)"
RELEASE: Final = "SELECT usage_release_tokens($1)"

# The organization's live holds, exact: the counter while no counted hold can have expired,
# else the sum of the live rows (an index range scan; the next reservation sweeps them).
LIVE_RESERVED: Final = (
    "CASE WHEN l.holds_next_expiry IS NULL OR l.holds_next_expiry > now()"
    " THEN l.tokens_reserved ELSE (SELECT coalesce(sum(h.tokens), 0) FROM usage_token_holds h"
    " WHERE h.organization_id = l.organization_id AND h.state = 'live'"
    " AND h.expires_at > now()) END"
)


# In the batch statement (biz2bricks_core.recording.INSERT_AND_COUNT), whose
# usage_limits rows are locked: the holds named by the batch's NEW events end. The statement
# passes only the events it inserted itself, so a redelivered or republished event, which
# inserts nothing, settles nothing twice. An id that names no live hold of the event's
# organization is ignored; the event counts as usual. A settled hold is deleted (its event is
# the record): deleting costs the batch about half of what updating the row to a 'settled'
# state did, measured with every event settling a hold.
def settle_holds_sql(new_events: str) -> str:
    """A DELETE for a data-modifying CTE: ends the live holds that ``new_events`` (a relation
    with organization_id and reservation_id) name, RETURNING organization_id and tokens.

    The holds are found through the primary key (``= ANY`` of the ids ``new_events`` carry,
    one array computed once), so the cost follows the batch, not the number of holds. The
    caller subtracts the returned tokens from ``tokens_reserved`` in the same statement
    (``reserved_after_settle_sql``), keeping the invariant of this module.
    """
    # The state test is written as "neither ended state" (the check constraint allows three):
    # the planner estimates it keeps nearly every row, so a batch of a thousand holds is not
    # mistaken for one and joined by nested loops (measured: 0.5 s a batch), and the partial
    # index of live holds, which it would otherwise pick, stays out of the plan.
    return (
        f"DELETE FROM usage_token_holds h USING {new_events} n"
        f" WHERE h.id = ANY(ARRAY(SELECT reservation_id FROM {new_events}"
        " WHERE reservation_id IS NOT NULL))"
        " AND h.id = n.reservation_id AND h.organization_id = n.organization_id"
        " AND h.state <> 'released' AND h.state <> 'expired'"
        " RETURNING h.organization_id, h.tokens"
    )


def reserved_after_settle(reserved: int, settled: int | None) -> int:
    """``tokens_reserved`` after holds of ``settled`` tokens (None: none) were settled."""
    return max(reserved - (settled or 0), 0)


def reserved_after_settle_sql(reserved: str, settled: str) -> str:
    """SQL twin of ``reserved_after_settle``."""
    return f"greatest({reserved} - coalesce({settled}, 0), 0)"


@dataclass(frozen=True, slots=True)
class TokenHold:
    """The answer of ``reserve_tokens``. ``limit`` None means unlimited.

    ``reserved`` is the organization's total of live holds, this one included; ``remaining``
    is allowance - used - reserved, never below 0. ``reservation_id`` is None when nothing was
    held (refused, unlimited plan, or the database was down).
    """

    allowed: bool
    reservation_id: uuid.UUID | None
    used: int
    reserved: int
    limit: int | None
    remaining: int | None
    reason: str
    expires_at: datetime | None
    # The end of the counters' period (as stored): a refused hold may be retried then, and
    # the FastAPI integration's 429 says so in Retry-After, as for a refused token check.
    period_end: datetime | None = None


def hold_from_row(row: Any) -> TokenHold:
    """Build a TokenHold from a row of ``usage_reserve_tokens``."""
    used, reserved, allowance = int(row["used"]), int(row["reserved"]), row["allowance"]
    return TokenHold(
        allowed=bool(row["allowed"]),
        reservation_id=row["reservation_id"],
        used=used,
        reserved=reserved,
        limit=None if allowance is None else int(allowance),
        remaining=remaining(None if allowance is None else int(allowance), used, reserved),
        reason=row["reason"],
        expires_at=row["expires_at"],
        period_end=row["period_end"],
    )
