"""The write path: one transaction per batch, set-based SQL, counters updated once per org.

1. Lock the batch's usage_limits rows in organization-id order (replicas cannot deadlock) and
   learn which organizations exist; events of unknown ones become rejects.
2. One statement inserts the events (ON CONFLICT (event_id) DO NOTHING) and, from the rows it
   actually inserted, adds tokens and cost to each organization's current period, rolling the
   period forward when an event is past ``period_end``. Redelivered events insert nothing and
   so change nothing.
3. Rejects are inserted in the same transaction. The caller acks only after the commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from biz2bricks_consumer.batching import Batch, Reject
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.events import UsageEvent
from biz2bricks_core.pricing import PriceBook, event_cost

LOCK_ORGS = text(
    "SELECT organization_id FROM usage_limits"
    " WHERE organization_id = ANY(CAST(:orgs AS uuid[]))"
    " ORDER BY organization_id FOR UPDATE"
)

INSERT_AND_COUNT = text(
    """
WITH input AS (
    SELECT * FROM unnest(
        CAST(:event_id AS uuid[]), CAST(:organization_id AS uuid[]), CAST(:user_id AS uuid[]),
        CAST(:occurred_at AS timestamptz[]), CAST(:provider AS text[]), CAST(:model AS text[]),
        CAST(:input_tokens AS bigint[]), CAST(:output_tokens AS bigint[]),
        CAST(:cache_read_tokens AS bigint[]), CAST(:cache_write_tokens AS bigint[]),
        CAST(:cost_usd AS numeric[]), CAST(:pricing_id AS integer[]),
        CAST(:operation AS text[]), CAST(:request_id AS text[]), CAST(:metadata AS text[])
    ) AS t(event_id, organization_id, user_id, occurred_at, provider, model, input_tokens,
           output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, pricing_id,
           operation, request_id, metadata)
),
inserted AS (
    INSERT INTO usage_events (event_id, organization_id, user_id, occurred_at, provider, model,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
        pricing_id, operation, request_id, metadata)
    SELECT event_id, organization_id, user_id, occurred_at, provider, model, input_tokens,
        output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, pricing_id, operation,
        request_id, CAST(metadata AS jsonb)
    FROM input
    ON CONFLICT (event_id) DO NOTHING
    RETURNING organization_id, occurred_at, input_tokens + output_tokens AS tokens, cost_usd
),
target AS (
    -- The period each organization's counters belong to after this batch.
    SELECT l.organization_id, l.period_start, count(*) AS inserted,
        CASE WHEN max(i.occurred_at) >= l.period_end
            THEN date_trunc(l.period_unit, max(i.occurred_at), 'UTC')
            ELSE l.period_start END AS new_start,
        l.period_unit
    FROM usage_limits l JOIN inserted i USING (organization_id)
    GROUP BY l.organization_id
),
sums AS (
    SELECT t.organization_id, t.new_start, t.inserted,
        t.new_start + CAST('1 ' || t.period_unit AS interval) AS new_end,
        coalesce(sum(i.tokens) FILTER (WHERE i.occurred_at >= t.new_start
            AND i.occurred_at < t.new_start + CAST('1 ' || t.period_unit AS interval)), 0)
            AS tokens,
        coalesce(sum(i.cost_usd) FILTER (WHERE i.occurred_at >= t.new_start
            AND i.occurred_at < t.new_start + CAST('1 ' || t.period_unit AS interval)), 0)
            AS cost
    FROM target t JOIN inserted i USING (organization_id)
    GROUP BY t.organization_id, t.new_start, t.inserted, t.period_unit
)
UPDATE usage_limits u SET
    -- Credits pay for what the finished period used beyond the plan, once, at the roll.
    credits_tokens = CASE WHEN s.new_start = u.period_start THEN u.credits_tokens
        ELSE greatest(u.credits_tokens - greatest(
            u.tokens_used_period - coalesce(u.token_limit, u.tokens_used_period), 0), 0) END,
    tokens_used_period = CASE WHEN s.new_start = u.period_start
        THEN u.tokens_used_period ELSE 0 END + s.tokens,
    cost_usd_period = CASE WHEN s.new_start = u.period_start
        THEN u.cost_usd_period ELSE 0 END + s.cost,
    period_start = s.new_start,
    period_end = s.new_end,
    counters_updated_at = now()
FROM sums s
WHERE u.organization_id = s.organization_id
RETURNING s.inserted
"""
)

INSERT_REJECTS = text(
    "INSERT INTO usage_event_rejects (organization_id, message_id, reason, reason_code,"
    " raw_data, attributes, delivery_attempt, published_at)"
    " SELECT o, m, r, c, d, CAST(a AS jsonb), n, p FROM unnest("
    " CAST(:org AS uuid[]), CAST(:message_id AS text[]), CAST(:reason AS text[]),"
    " CAST(:code AS text[]), CAST(:data AS bytea[]), CAST(:attributes AS text[]),"
    " CAST(:attempt AS integer[]), CAST(:published AS timestamptz[])) AS t(o, m, r, c, d, a, n, p)"
)


EVENT_COLUMNS = (
    "event_id",
    "organization_id",
    "user_id",
    "occurred_at",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "pricing_id",
    "operation",
    "request_id",
    "metadata",
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: int
    duplicates: int
    rejected: list[Reject]


def event_columns(events: Sequence[UsageEvent], prices: PriceBook) -> dict[str, list[Any]]:
    """Column arrays for INSERT_AND_COUNT, cost computed from the price in force per event."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}
    zero = Decimal(0)
    for e in events:
        price = prices.price_at(e.provider, e.model, e.occurred_at)
        cols["event_id"].append(e.event_id)
        cols["organization_id"].append(e.organization_id)
        cols["user_id"].append(e.user_id)
        cols["occurred_at"].append(e.occurred_at)
        cols["provider"].append(e.provider)
        cols["model"].append(e.model)
        cols["input_tokens"].append(e.input_tokens)
        cols["output_tokens"].append(e.output_tokens)
        cols["cache_read_tokens"].append(e.cache_read_tokens)
        cols["cache_write_tokens"].append(e.cache_write_tokens)
        if price is None:
            cols["cost_usd"].append(zero)
            cols["pricing_id"].append(None)
        else:
            cols["cost_usd"].append(
                event_cost(
                    price,
                    input_tokens=e.input_tokens,
                    output_tokens=e.output_tokens,
                    cache_read_tokens=e.cache_read_tokens,
                    cache_write_tokens=e.cache_write_tokens,
                )
            )
            cols["pricing_id"].append(price.id)
        cols["operation"].append(e.operation)
        cols["request_id"].append(e.request_id)
        cols["metadata"].append(None if e.metadata is None else json.dumps(e.metadata))
    return cols


def reject_columns(rejects: Sequence[Reject]) -> dict[str, list[Any]]:
    """Column arrays for INSERT_REJECTS."""
    return {
        "org": [r.organization_id for r in rejects],
        "message_id": [r.message.message_id for r in rejects],
        "reason": [r.reason for r in rejects],
        "code": [r.reason_code for r in rejects],
        "data": [r.message.data for r in rejects],
        "attributes": [json.dumps(dict(r.message.attributes)) for r in rejects],
        "attempt": [r.message.delivery_attempt for r in rejects],
        "published": [r.message.publish_time for r in rejects],
    }


class BatchWriter:
    """Writes decoded batches; each ``write`` is one committed transaction."""

    def __init__(self, db: DatabaseManager, prices: Callable[[], PriceBook]) -> None:
        self._db = db
        self._prices = prices

    async def write(self, batch: Batch) -> WriteResult:
        """Commit the batch's events, counters and rejects together, or raise and change nothing."""
        async with self._db.engine.begin() as conn:
            return await self.write_in(conn, batch)

    async def write_in(self, conn: AsyncConnection, batch: Batch) -> WriteResult:
        """The batch's statements on an open transaction (the caller commits)."""
        events, rejects = batch.events, list(batch.rejects)
        inserted = 0
        if events:
            orgs = sorted({e.organization_id for e in events})
            known = set((await conn.execute(LOCK_ORGS, {"orgs": orgs})).scalars())
            if len(known) < len(orgs):
                events, unknown = _split_unknown(batch, known)
                rejects.extend(unknown)
            if events:
                params = event_columns(events, self._prices())
                result = await conn.execute(INSERT_AND_COUNT, params)
                inserted = sum(int(n) for n in result.scalars())
        if rejects:
            await conn.execute(INSERT_REJECTS, reject_columns(rejects))
        duplicates = len(events) - inserted + batch.duplicates_in_batch
        return WriteResult(inserted=inserted, duplicates=duplicates, rejected=rejects)


def _split_unknown(batch: Batch, known: set[uuid.UUID]) -> tuple[list[UsageEvent], list[Reject]]:
    keep: list[UsageEvent] = []
    unknown: list[Reject] = []
    for event, message in zip(batch.events, batch.sources, strict=True):
        if event.organization_id in known:
            keep.append(event)
        else:
            reason = f"organization_id: {event.organization_id} is not a provisioned organization"
            unknown.append(Reject(message, "unknown_organization", reason))
    return keep, unknown
