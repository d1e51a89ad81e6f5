"""Re-price stored events from the prices now in ``model_pricing``.

For the chosen events (a range of days, optionally only the unpriced ones) the price row is
resolved again exactly as the consumer resolves it (biz2bricks_core.pricing.PriceBook with
genai-prices' model names) and the cost recomputed by the same SQL (``cost_sql``). Events
whose pricing_id, cost or unpriced reason would change are updated in batches, each in a
short transaction that first locks the batch's usage_limits rows in organization order (the
writer's order, so neither can deadlock the other) and moves the current period's
``cost_usd_period`` and ``unpriced_events_period`` by the difference. The days touched are
then rolled up again and one audit row per organization records the run. Running it twice
changes nothing: the second run finds no difference.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final

from biz2bricks_core.counters import lock_counters_sql, lock_order
from biz2bricks_core.counting import is_unpriced
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.periods import in_period
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.pricing import PriceBook, cost_sql, unpriced_reason_sql
from biz2bricks_rollup.rollup import day_bounds, run_rollup

BATCH_SIZE: Final = 1_000

SELECT_EVENTS = """
SELECT event_id, organization_id, occurred_at, provider, model, input_tokens, price_variant,
    web_search_requests
FROM usage_events
WHERE occurred_at >= $1::timestamptz AND occurred_at < $2::timestamptz
    AND (NOT $3::boolean OR cost_usd IS NULL) AND voided_at IS NULL
    AND (occurred_at, event_id) > ($4::timestamptz, $5::uuid)
    AND ($7::uuid[] IS NULL OR organization_id = ANY($7::uuid[]))
ORDER BY occurred_at, event_id
LIMIT $6::integer
"""

CHANGES = f"""
WITH v AS (
    SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[]) AS v(event_id, pricing_id, reason)
),
changes AS (
    SELECT e.event_id, e.organization_id, e.occurred_at, e.provider, e.model,
        e.cost_usd AS old_cost, e.pricing_id AS old_pricing_id, e.unpriced_reason AS old_reason,
        {cost_sql("e", "p")} AS new_cost, p.id AS new_pricing_id,
        {unpriced_reason_sql("p.id", "v.reason")} AS new_reason
    FROM v JOIN usage_events e USING (event_id)
    LEFT JOIN model_pricing p ON p.id = v.pricing_id
)
"""
DIFFERENT = """
    SELECT * FROM changes c WHERE (c.old_cost, c.old_pricing_id, c.old_reason)
        IS DISTINCT FROM (c.new_cost, c.new_pricing_id, c.new_reason)
"""
PREVIEW = CHANGES + DIFFERENT
APPLY = (
    CHANGES
    + ", different AS ("
    + DIFFERENT
    + """),
updated AS (
    UPDATE usage_events e SET cost_usd = d.new_cost, pricing_id = d.new_pricing_id,
        unpriced_reason = d.new_reason
    FROM different d WHERE e.event_id = d.event_id
    RETURNING e.event_id
)
SELECT d.* FROM different d JOIN updated u USING (event_id)
"""
)
LOCK_ORGS = lock_counters_sql(
    "SELECT unnest($1::uuid[])", "l.organization_id, l.period_start, l.period_end"
)
MOVE_COUNTERS = (
    "UPDATE usage_limits u SET cost_usd_period = u.cost_usd_period + d.cost,"
    " unpriced_events_period = u.unpriced_events_period + d.unpriced, updated_at = now()"
    " FROM unnest($1::uuid[], $2::numeric[], $3::bigint[]) AS d(organization_id, cost, unpriced)"
    " WHERE u.organization_id = d.organization_id"
)
AUDIT = (
    "INSERT INTO audit_logs (organization_id, action, entity_type, details)"
    " SELECT o, 'usage.repriced', 'usage_events', d::jsonb"
    " FROM unnest($1::uuid[], $2::text[]) AS t(o, d)"
)


@dataclass
class Difference:
    """What re-pricing changes for one organization, provider and model."""

    events: int = 0
    old_cost: Decimal = Decimal(0)
    new_cost: Decimal = Decimal(0)
    unpriced_before: int = 0
    unpriced_after: int = 0

    def add(self, old: Decimal | None, new: Decimal | None) -> None:
        """Count one changed event."""
        self.events += 1
        self.old_cost += old or 0
        self.new_cost += new or 0
        self.unpriced_before += old is None
        self.unpriced_after += new is None


@dataclass
class RepriceResult:
    """The differences found (and applied, unless a dry run) and the days rolled up again."""

    dry_run: bool
    examined: int = 0
    differences: dict[tuple[uuid.UUID, str, str], Difference] = field(default_factory=dict)
    days: set[date] = field(default_factory=set)

    @property
    def changed(self) -> int:
        """Events whose cost, price row or unpriced reason changed (or would)."""
        return sum(d.events for d in self.differences.values())

    def lines(self) -> list[str]:
        """One line per organization and model, for the terminal."""
        out = []
        for (org, provider, model), d in sorted(self.differences.items(), key=str):
            out.append(
                f"{org} {provider}/{model}: {d.events} event(s), cost {d.old_cost} -> "
                f"{d.new_cost} (delta {d.new_cost - d.old_cost}), unpriced "
                f"{d.unpriced_before} -> {d.unpriced_after}"
            )
        return out


def _bounds(first: date | None, last: date | None) -> tuple[datetime, datetime]:
    start = day_bounds(first)[0] if first else datetime.min.replace(tzinfo=UTC)
    end = day_bounds(last)[1] if last else datetime.max.replace(tzinfo=UTC)
    if end <= start:
        raise ValueError(f"--to {last} is before --from {first}")
    return start, end


def resolve(book: PriceBook, rows: Sequence[Any]) -> tuple[list[int | None], list[str | None]]:
    """The price row of each event (or why none), exactly as the consumer resolves it."""
    ids: list[int | None] = []
    reasons: list[str | None] = []
    for r in rows:
        found = book.lookup(
            r["provider"],
            r["model"],
            r["occurred_at"],
            r["input_tokens"],
            r["price_variant"],
            r["web_search_requests"],
        )
        ids.append(None if found.price is None else found.price.id)
        reasons.append(found.reason)
    return ids, reasons


async def reprice(
    db: DatabaseManager,
    *,
    first: date | None = None,
    last: date | None = None,
    unpriced_only: bool = False,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    book: PriceBook | None = None,
    organizations: Sequence[uuid.UUID] | None = None,
) -> RepriceResult:
    """Re-price the chosen events in batches (of ``organizations`` only, if given); see the
    module docstring."""
    start, end = _bounds(first, last)
    book = book if book is not None else await load_price_book(db, ModelNames())
    result = RepriceResult(dry_run=dry_run)
    cursor: tuple[datetime, uuid.UUID] = (start, uuid.UUID(int=0))
    while True:
        async with db.driver() as conn:
            rows = await conn.fetch(
                SELECT_EVENTS,
                start,
                end,
                unpriced_only,
                *cursor,
                batch_size,
                None if organizations is None else list(organizations),
            )
            if not rows:
                break
            cursor = (rows[-1]["occurred_at"], rows[-1]["event_id"])
            result.examined += len(rows)
            params = ([r["event_id"] for r in rows], *resolve(book, rows))
            if dry_run:
                changed = await conn.fetch(PREVIEW, *params)
            else:
                changed = await _apply(conn, rows, params)
        for c in changed:
            key = (c["organization_id"], c["provider"], c["model"])
            result.differences.setdefault(key, Difference()).add(c["old_cost"], c["new_cost"])
            result.days.add(c["occurred_at"].astimezone(UTC).date())
    if not dry_run and result.days:
        await run_rollup(db, sorted(result.days), wait=True)
        await _audit(db, result, first, last, unpriced_only)
    return result


async def _apply(conn: Any, rows: Sequence[Any], params: tuple[Any, ...]) -> list[Any]:
    """One short transaction: lock the organizations, update events, move the counters."""
    async with conn.transaction():
        orgs = lock_order(r["organization_id"] for r in rows)
        periods = {r[0]: (r[1], r[2]) for r in await conn.fetch(LOCK_ORGS, orgs)}
        changed = list(await conn.fetch(APPLY, *params))
        cost: dict[uuid.UUID, Decimal] = {}
        unpriced: dict[uuid.UUID, int] = {}
        for c in changed:
            period = periods.get(c["organization_id"])
            if period is None or not in_period(c["occurred_at"], *period):
                continue  # another period: its counters are history
            org = c["organization_id"]
            cost[org] = cost.get(org, Decimal(0)) + (c["new_cost"] or 0) - (c["old_cost"] or 0)
            unpriced[org] = (
                unpriced.get(org, 0) + is_unpriced(c["new_cost"]) - is_unpriced(c["old_cost"])
            )
        if cost:
            moved = sorted(cost)
            await conn.execute(
                MOVE_COUNTERS, moved, [cost[o] for o in moved], [unpriced[o] for o in moved]
            )
    return changed


async def _audit(
    db: DatabaseManager,
    result: RepriceResult,
    first: date | None,
    last: date | None,
    unpriced_only: bool,
) -> None:
    per_org: dict[uuid.UUID, Difference] = {}
    for (org, _, _), d in result.differences.items():
        total = per_org.setdefault(org, Difference())
        total.events += d.events
        total.old_cost += d.old_cost
        total.new_cost += d.new_cost
        total.unpriced_before += d.unpriced_before
        total.unpriced_after += d.unpriced_after
    orgs = sorted(per_org)
    details = [
        json.dumps(
            {
                "events": per_org[o].events,
                "cost_before": str(per_org[o].old_cost),
                "cost_after": str(per_org[o].new_cost),
                "unpriced_before": per_org[o].unpriced_before,
                "unpriced_after": per_org[o].unpriced_after,
                "from": first.isoformat() if first else None,
                "to": last.isoformat() if last else None,
                "unpriced_only": unpriced_only,
            }
        )
        for o in orgs
    ]
    async with db.driver() as conn:
        await conn.execute(AUDIT, orgs, details)
