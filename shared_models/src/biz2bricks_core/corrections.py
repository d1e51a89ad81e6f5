"""Corrections of recorded usage: voids, appended, with every dependent number kept in step.

A void never deletes or rewrites the fact: the event row stays with ``voided_at`` set (it
counts nowhere from then on, and a redelivery of it inserts nothing, so it is never counted
again), and a ``usage_corrections`` row records why, who asked, and what it gave back. In the
same transaction, under the organization's counter-row lock (the consumer's lock order):

- an event that counted in the organization's current period gives back its tokens, cost and
  unpriced count (biz2bricks_core.periods decides where it counted);
- what grants paid for beyond the plan is recomputed for the usage left
  (``credits.grants_kept_after_void``), and the difference goes back to the grants that paid,
  last paid first (``credits.restore``), with a restore row per grant in the ledger;
- the daily summaries of the days touched that the rollup already ran for are rebuilt for the
  organization (biz2bricks_core.summaries.refresh_summaries); the correction also makes its
  event's day due again, so the next rollup run (and the usage query) check it.

Events of a period that is not the current one (counters already rolled) give back nothing to
the counters; statements book them as adjustments (biz2bricks_core.statements).

An amendment (biz2bricks_core.amendments) is such a void plus the corrected event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.counting import event_tokens_sql
from biz2bricks_core.credits import (
    FLUSH_GRANTS,
    GrantState,
    grants_kept_after_void,
    refresh_grants,
    restore,
)
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import (
    InvalidArgumentError,
    UnknownOrganizationError,
)
from biz2bricks_core.late_events import utc_day_of
from biz2bricks_core.periods import in_period, period_bounds
from biz2bricks_core.summaries import refresh_summaries

__all__ = ["VoidResult", "preview_void", "void_events", "void_locked"]

LOCK: Final = (
    "SELECT now() AS now, period_start, period_end, period_unit, token_limit,"
    " tokens_used_period, grants_consumed_period FROM usage_limits"
    " WHERE organization_id = $1 FOR UPDATE"
)
# The organization's events a void names: by ids, by request id, or by a range of occurred_at.
TARGETS: Final = (
    "organization_id = $1"
    " AND ($2::uuid[] IS NULL OR event_id = ANY($2::uuid[]))"
    " AND ($3::text IS NULL OR request_id = $3::text)"
    " AND ($4::timestamptz IS NULL OR occurred_at >= $4::timestamptz)"
    " AND ($5::timestamptz IS NULL OR occurred_at < $5::timestamptz)"
)
SELECT_TARGETS: Final = f"SELECT event_id, voided_at FROM usage_events WHERE {TARGETS}"
# What a void would take away, per provider and model (a dry run prints it first).
PREVIEW: Final = (
    "SELECT provider, model, count(*) AS events,"
    f" sum({event_tokens_sql('input_tokens', 'output_tokens')}) AS tokens,"
    " sum(cost_usd) AS cost_usd, count(*) - count(cost_usd) AS unpriced"
    f" FROM usage_events WHERE {TARGETS} AND voided_at IS NULL"
    " GROUP BY provider, model ORDER BY provider, model"
)
VOID: Final = (
    "UPDATE usage_events SET voided_at = now() WHERE event_id = ANY($1::uuid[])"
    " AND organization_id = $2 AND voided_at IS NULL"
    " RETURNING event_id, occurred_at, provider, model,"
    f" {event_tokens_sql('input_tokens', 'output_tokens')} AS tokens, cost_usd"
)
GIVE_BACK: Final = (
    "UPDATE usage_limits SET tokens_used_period = tokens_used_period - $2,"
    " cost_usd_period = cost_usd_period - $3, unpriced_events_period = unpriced_events_period - $4,"
    " grants_consumed_period = grants_consumed_period - $5, counters_updated_at = now(),"
    " updated_at = now() WHERE organization_id = $1"
)
# What each grant paid for in the period, net of what earlier voids restored.
PAID_IN_PERIOD: Final = (
    "SELECT g.id, g.remaining, g.priority, g.effective_at, g.expires_at, g.voided_at,"
    " g.created_at, sum(CASE WHEN c.kind = 'consume' THEN c.tokens ELSE -c.tokens END) AS paid"
    " FROM credit_ledger c JOIN credit_grants g ON g.id = c.grant_id"
    " WHERE c.organization_id = $1 AND c.period_start = $2 AND c.kind IN ('consume', 'restore')"
    " GROUP BY g.id"
)
# An earlier period's usage left after a void (its counters rolled since) and what grants paid
# for in it (consume less restore rows; FLUSH_GRANTS has booked what they owed).
EARLIER_PERIOD: Final = (
    f"SELECT coalesce((SELECT sum({event_tokens_sql('input_tokens', 'output_tokens')})"
    " FROM usage_events WHERE organization_id = $1 AND occurred_at >= $2 AND occurred_at < $3"
    " AND voided_at IS NULL), 0) AS used,"
    " coalesce((SELECT sum(CASE WHEN kind = 'consume' THEN tokens ELSE -tokens END)"
    " FROM credit_ledger WHERE organization_id = $1 AND period_start = $2"
    " AND kind IN ('consume', 'restore')), 0) AS consumed"
)
RESTORE: Final = (
    "WITH given AS (SELECT * FROM unnest($2::uuid[], $3::bigint[]) AS t(grant_id, tokens)),"
    " restored AS (UPDATE credit_grants g SET remaining = least(g.remaining + given.tokens,"
    "   g.tokens) FROM given WHERE g.id = given.grant_id AND g.voided_at IS NULL)"
    " INSERT INTO credit_ledger (organization_id, grant_id, kind, tokens, period_start)"
    " SELECT $1, grant_id, 'restore', tokens, $4 FROM given"
)
RECORD: Final = (
    "INSERT INTO usage_corrections (organization_id, event_id, kind, new_event_id, reason,"
    " actor, occurred_at, provider, model, tokens, cost_usd, counted, grants_restored)"
    " SELECT $1, e, $2, NULL, $3, $4, o, p, m, t, c, k, r FROM unnest($5::uuid[],"
    " $6::timestamptz[], $7::text[], $8::text[], $9::bigint[], $10::numeric[], $11::boolean[],"
    " $12::bigint[]) AS x(e, o, p, m, t, c, k, r)"
)
AUDIT: Final = (
    "INSERT INTO audit_logs (organization_id, action, entity_type, details)"
    " VALUES ($1, 'usage.' || $3::text, 'usage_events', $2::jsonb)"
)


@dataclass(frozen=True, slots=True)
class VoidResult:
    """What a void did: events voided now, voided before, ids not found (of the organization),
    and the tokens and (priced) cost of the events voided now."""

    voided: int
    already_voided: int
    not_found: int
    tokens: int
    cost_usd: Decimal


def _selector(
    event_ids: Sequence[uuid.UUID] | None,
    request_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> None:
    chosen = [event_ids is not None, request_id is not None, start is not None or end is not None]
    if sum(chosen) != 1:
        raise InvalidArgumentError(
            "void_events: name the events by exactly one of event_ids, request_id, or start and end"
        )
    if (start is None) != (end is None):
        raise InvalidArgumentError("start and end: give both, for the range [start, end)")
    for name, moment in (("start", start), ("end", end)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidArgumentError(f"{name}: must be a timezone-aware datetime")
    if start is not None and end is not None and end <= start:
        raise InvalidArgumentError("end: must be after start")


async def void_events(
    db: DatabaseManager,
    org: uuid.UUID,
    *,
    event_ids: Sequence[uuid.UUID] | None,
    request_id: str | None,
    start: datetime | None,
    end: datetime | None,
    reason: str,
    actor: str | None,
    kind: str = "void",
    conn: Any = None,
) -> VoidResult:
    """Void the organization's named events; see the module docstring. Idempotent."""
    _selector(event_ids, request_id, start, end)
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgumentError("reason: say why the usage is voided (a non-empty string)")
    if conn is not None:
        return await void_locked(conn, org, event_ids, request_id, start, end, reason, actor, kind)
    async with db.unavailable_as_error(), db.driver() as own, own.transaction():
        return await void_locked(own, org, event_ids, request_id, start, end, reason, actor, kind)


async def preview_void(
    db: DatabaseManager,
    org: uuid.UUID,
    *,
    event_ids: Sequence[uuid.UUID] | None,
    request_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> list[Any]:
    """What ``void_events`` with these selectors would void now, per provider and model."""
    _selector(event_ids, request_id, start, end)
    ids = None if event_ids is None else list(event_ids)
    async with db.unavailable_as_error(), db.driver() as conn:
        return list(await conn.fetch(PREVIEW, org, ids, request_id, start, end))


async def void_locked(
    conn: Any,
    org: uuid.UUID,
    event_ids: Sequence[uuid.UUID] | None,
    request_id: str | None,
    start: datetime | None,
    end: datetime | None,
    reason: str,
    actor: str | None,
    kind: str,
    *,
    refresh: bool = True,
) -> VoidResult:
    """Void on ``conn``, in the caller's transaction: lock the organization's counter row, mark
    the events, give back what they counted, record the corrections, and (unless ``refresh``
    is False: the caller rebuilds them with more) rebuild the summaries of the days touched."""
    limits = await conn.fetchrow(LOCK, org)
    if limits is None:
        raise UnknownOrganizationError(f"organization {org} has no usage_limits row")
    ids = None if event_ids is None else list(dict.fromkeys(event_ids))
    targets = await conn.fetch(SELECT_TARGETS, org, ids, request_id, start, end)
    not_found = 0 if ids is None else len(ids) - len(targets)
    already = sum(1 for t in targets if t["voided_at"] is not None)
    open_ids = [t["event_id"] for t in targets if t["voided_at"] is None]
    voided = await conn.fetch(VOID, open_ids, org) if open_ids else []
    counted = [
        in_period(v["occurred_at"], limits["period_start"], limits["period_end"]) for v in voided
    ]
    tokens = sum(int(v["tokens"]) for v, c in zip(voided, counted, strict=True) if c)
    cost = sum(
        (
            v["cost_usd"]
            for v, c in zip(voided, counted, strict=True)
            if c and v["cost_usd"] is not None
        ),
        Decimal(0),
    )
    unpriced = sum(1 for v, c in zip(voided, counted, strict=True) if c and v["cost_usd"] is None)
    restored = 0
    if tokens:
        restored = await _restore_grants(
            conn,
            org,
            limits["period_start"],
            int(limits["grants_consumed_period"]),
            int(limits["tokens_used_period"]) - tokens,
            limits["token_limit"],
        )
    # Events of earlier periods (their counters rolled): what grants paid for beyond the plan
    # there is recomputed for the usage left in that period, as for the current one.
    periods = [
        None if c else period_bounds(v["occurred_at"], limits["period_unit"])[0]
        for v, c in zip(voided, counted, strict=True)
    ]
    restored_in: dict[datetime | None, int] = {None: restored}
    earlier = list(dict.fromkeys(p for p in periods if p is not None))
    if earlier:  # what the grants owe is in the ledger first, once for every period read
        await conn.execute(FLUSH_GRANTS, [org])
    for start in earlier:
        restored_in[start] = await _restore_earlier(conn, org, limits, start)
    if voided:
        await conn.execute(GIVE_BACK, org, tokens, cost, unpriced, restored)
        share = _shares(voided, periods, restored_in)
        await conn.execute(
            RECORD,
            org,
            kind,
            reason,
            actor,
            [v["event_id"] for v in voided],
            [v["occurred_at"] for v in voided],
            [v["provider"] for v in voided],
            [v["model"] for v in voided],
            [int(v["tokens"]) for v in voided],
            [v["cost_usd"] for v in voided],
            counted,
            share,
        )
        details = {
            "events": len(voided),
            "tokens": sum(int(v["tokens"]) for v in voided),
            "counted_tokens": tokens,
            "grants_restored": restored,
            "reason": reason,
            "actor": actor,
        }
        await conn.execute(AUDIT, org, json.dumps(details), kind)
        if refresh:
            await refresh_summaries(conn, {(org, utc_day_of(v["occurred_at"])) for v in voided})
    all_cost = sum((v["cost_usd"] for v in voided if v["cost_usd"] is not None), Decimal(0))
    return VoidResult(
        voided=len(voided),
        already_voided=already,
        not_found=not_found,
        tokens=sum(int(v["tokens"]) for v in voided),
        cost_usd=all_cost,
    )


async def _restore_earlier(conn: Any, org: uuid.UUID, limits: Any, start: datetime) -> int:
    """Give back to the grants what they paid in the earlier period beginning at ``start``
    beyond the usage left in it; the tokens restored (the caller flushed what grants owe)."""
    end = period_bounds(start, limits["period_unit"])[1]
    row = await conn.fetchrow(EARLIER_PERIOD, org, start, end)
    return await _restore_grants(
        conn, org, start, int(row["consumed"]), int(row["used"]), limits["token_limit"]
    )


async def _restore_grants(
    conn: Any,
    org: uuid.UUID,
    period_start: datetime,
    consumed: int,
    used_after: int,
    limit: int | None,
) -> int:
    """Give back to the grants what they paid in the period beyond the usage left in it
    (``used_after``); the tokens restored."""
    if consumed <= 0:
        return 0
    give = consumed - grants_kept_after_void(consumed, used_after, limit)
    if give <= 0:
        return 0
    await conn.execute(FLUSH_GRANTS, [org])  # what the grants owe is in the ledger first
    rows = await conn.fetch(PAID_IN_PERIOD, org, period_start)
    paid = [
        (
            GrantState(
                r["id"],
                int(r["remaining"]),
                int(r["priority"]),
                r["effective_at"],
                r["expires_at"],
                r["voided_at"],
                r["created_at"],
            ),
            int(r["paid"]),
        )
        for r in rows
    ]
    given = restore(paid, give)
    if not given:
        return 0
    await conn.execute(RESTORE, org, [g for g, _ in given], [t for _, t in given], period_start)
    await refresh_grants(conn, [org])
    return sum(t for _, t in given)


def _shares(
    voided: Sequence[Any],
    periods: Sequence[datetime | None],
    restored: dict[datetime | None, int],
) -> list[int]:
    """The grant tokens restored in each period (None: the current one), attributed to the
    voided events of that period (the last ones first)."""
    shares = [0] * len(voided)
    left = dict(restored)
    for i in reversed(range(len(voided))):
        give = min(int(voided[i]["tokens"]), left.get(periods[i], 0))
        shares[i] = give
        left[periods[i]] = left.get(periods[i], 0) - give
    return shares
