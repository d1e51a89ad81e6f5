"""What the limit checks answer: the decision and snapshot types, the token check's statement
and the pure rule that turns its row into a decision (composed of the billing rules' modules).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.allowance import allowance, remaining, token_reason
from biz2bricks_core.credits import grants_owing_sql, live_grants_remaining_sql
from biz2bricks_core.holds import LIVE_RESERVED
from biz2bricks_core.periods import (
    period_end_sql,
    period_reading,
    period_reading_sql,
    period_start_after_sql,
)

__all__ = ["SNAPSHOT", "TOKEN_CHECK", "LimitDecision", "UsageSnapshot", "token_decision"]

# One primary-key read: the counters, the live holds and the live grants (each exact at now()).
TOKEN_CHECK: Final = (
    "SELECT token_limit, grants_consumed_period, tokens_used_period, soft_limit, period_end,"
    f" counters_updated_at, now() AS now, {LIVE_RESERVED} AS reserved,"
    f" {live_grants_remaining_sql('l')} AS grants_live"
    " FROM usage_limits l WHERE organization_id = $1"
)
# The period the counters stand for at now(): theirs while it runs; once it has ended (no event
# has rolled them yet), the period that holds now(), which is what a dashboard shows.
_NOW_PERIOD: Final = (
    "CROSS JOIN LATERAL (SELECT p.start,"
    f" {period_end_sql('p.start', 'l.period_unit')} AS end_ FROM (SELECT"
    f" {period_start_after_sql('l.period_start', 'l.period_end', 'now()', 'l.period_unit')}"
    " AS start) p) cur"
)
SNAPSHOT: Final = (
    "SELECT plan, cur.start AS period_start, cur.end_ AS period_end, token_limit,"
    f" {period_reading_sql('l.tokens_used_period', 'l.period_end')} AS tokens,"
    f" {period_reading_sql('l.cost_usd_period', 'l.period_end')} AS cost,"
    f" {period_reading_sql('l.unpriced_events_period', 'l.period_end')} AS unpriced,"
    f" {period_reading_sql('l.grants_consumed_period', 'l.period_end')} AS consumed,"
    f" {live_grants_remaining_sql('l')} AS credits_remaining,"
    # What grants that ended by expiry in this period still held (their breakage), less what
    # they owe of the tokens the batch path paid from the cache. A grant voided after it
    # expired still held its breakage (a void takes what is owed first: it owes nothing).
    " (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants g"
    "   WHERE g.organization_id = l.organization_id AND g.expires_at >= cur.start"
    "   AND g.expires_at < least(now(), cur.end_) AND g.voided_at >= g.expires_at)"
    " + (SELECT coalesce(sum(g.remaining - g.owed), 0)"
    f"   FROM {grants_owing_sql('l')} g WHERE g.expires_at >= cur.start"
    "   AND g.expires_at < least(now(), cur.end_)) AS expired,"
    " storage_used_bytes, storage_limit_bytes, counters_updated_at"
    f" FROM usage_limits l {_NOW_PERIOD} WHERE organization_id = :org"
)


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The answer of a limit check. ``limit`` None means unlimited.

    ``reserved`` is the organization's total of live token holds (0 for storage); ``remaining``
    is limit - used - reserved, never below 0.
    """

    allowed: bool
    used: int
    limit: int | None
    remaining: int | None
    reason: str
    reserved: int = 0
    period_end: datetime | None = None
    counters_updated_at: datetime | None = None
    counter_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """An organization's usage against its limits, for dashboards."""

    organization_id: uuid.UUID
    plan: str
    period_start: datetime
    period_end: datetime
    tokens_used_period: int
    token_limit: int | None
    # What the live credit grants still hold, what grants paid for in this period (usage
    # beyond the plan), and what grants that expired in this period left unused.
    credits_remaining: int
    grants_consumed_period: int
    grants_expired_period: int
    cost_usd_period: Decimal
    storage_used_bytes: int
    storage_limit_bytes: int | None
    counters_updated_at: datetime | None
    # Events of the period with no price: cost_usd_period is the cost of the others only.
    unpriced_events_period: int = 0


def token_decision(row: Any, estimated_tokens: int) -> LimitDecision:
    """Decide a token check from a usage_limits row and its live holds (pure: no I/O)."""
    now: datetime = row["now"]
    used = period_reading(int(row["tokens_used_period"]), row["period_end"], now)
    consumed = period_reading(int(row["grants_consumed_period"]), row["period_end"], now)
    reserved = int(row["reserved"])
    updated = row["counters_updated_at"]
    age = None if updated is None else max((now - updated).total_seconds(), 0.0)
    common = {"period_end": row["period_end"], "counters_updated_at": updated, "counter_age_s": age}
    limit = row["token_limit"]
    allowed_tokens = allowance(
        None if limit is None else int(limit), consumed, int(row["grants_live"])
    )
    reason = token_reason(used, reserved, estimated_tokens, allowed_tokens, bool(row["soft_limit"]))
    left = remaining(allowed_tokens, used, reserved)
    allowed = reason != "token_limit_exceeded"
    return LimitDecision(allowed, used, allowed_tokens, left, reason, reserved, **common)
