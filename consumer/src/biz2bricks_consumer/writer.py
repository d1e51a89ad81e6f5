"""The write path: one transaction per batch, set-based SQL, counters updated once per org.

1. One statement locks the batch's usage_limits rows in organization-id order (replicas
   cannot deadlock), inserts the events of the organizations it locked (ON CONFLICT
   (event_id) DO NOTHING) and, from the rows it actually inserted, adds tokens and cost to
   each organization's current period, rolling the period forward when an event is past
   ``period_end``. In the same statement the new events carrying a ``reservation_id``
   settle their live holds (biz2bricks_core.holds) and the thresholds of the allowance that
   the batch's usage crossed are written to ``usage_alerts`` (biz2bricks_core.alerts).
   Redelivered events insert nothing and so change nothing.
2. Events of organizations that are not provisioned become ``unknown_organization`` rejects.
3. When fewer rows were inserted than sent, the event_ids that were already stored (by an
   earlier transaction) are compared with what arrived: other content under the same
   event_id is a ``conflicting_duplicate`` reject, an identical redelivery stays silent.
4. Rejects are inserted in the same transaction. The caller acks only after the commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Any

import orjson
from pydantic import TypeAdapter

from biz2bricks_consumer.batching import (
    CONFLICTING_DUPLICATE,
    Batch,
    InboundMessage,
    Reject,
    conflict_reason,
    storable_attributes,
)
from biz2bricks_core.alerts import insert_alerts_sql
from biz2bricks_core.credits import credits_after_period_sql
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.events import UsageEvent
from biz2bricks_core.holds import reserved_after_settle_sql, settle_holds_sql
from biz2bricks_core.periods import period_end_sql, period_start_sql
from biz2bricks_core.pricing import NO_PRICE_ROW, PriceBook, cost_sql

# Statements run on the asyncpg connection under a pooled SQLAlchemy one: SQLAlchemy's
# execute and result layers cost ~1 ms per batch here, a fifth of the batch's write time.
# asyncpg prepares each statement once per connection, and after five runs PostgreSQL plans
# it once for any batch (a generic plan). Forcing a plan per batch (plan_cache_mode) was
# measured slower in every case: 0.62 against 0.68x raw at 1,000 events per batch, and at 250
# events with holds 0.16 against 0.54x (the per-batch plan scanned the holds table).
PERIOD_END = period_end_sql("o.new_start", "o.period_unit")
NEW_START = period_start_sql("max(i.occurred_at)", "l.period_unit")
CREDITS_AT_ROLL = credits_after_period_sql(
    "u.credits_tokens", "u.tokens_used_period", "u.token_limit"
)
RESERVED_AFTER_SETTLE = reserved_after_settle_sql("u.tokens_reserved", "s.held_tokens")
SETTLE = settle_holds_sql("inserted")

# Each event reaches the statement as one JSON array of these columns, in this order, with
# the price row resolved for it (or why none applies): event_params writes them, INPUT reads
# them by position. Measured on 1,000 events, positions in jsonb cost the server a third of
# what json_to_recordset's named fields did (5 against 12 ms with the transfer), and one
# parameter replaces three typed arrays.
INPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"),
    ("organization_id", "uuid"),
    ("user_id", "uuid"),
    ("occurred_at", "timestamptz"),
    ("provider", "text"),
    ("model", "text"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("cache_read_tokens", "bigint"),
    ("cache_write_tokens", "bigint"),
    ("cache_write_1h_tokens", "bigint"),
    ("operation", "text"),
    ("request_id", "text"),
    ("metadata", "jsonb"),
    ("reservation_id", "uuid"),
    ("pricing_id", "integer"),
    ("unpriced_reason", "text"),
)
_EVENT_FIELDS = tuple(name for name, _ in INPUT_COLUMNS[:-2])


def _input_column(position: int, name: str, sql_type: str) -> str:
    if sql_type == "text":
        return f"e->>{position} AS {name}"
    if sql_type == "jsonb":  # a JSON null is SQL NULL, as an absent metadata is
        return f"nullif(e->{position}, 'null'::jsonb) AS {name}"
    return f"(e->>{position})::{sql_type} AS {name}"


INPUT = ",\n        ".join(
    _input_column(position, name, sql_type)
    for position, (name, sql_type) in enumerate(INPUT_COLUMNS)
)
INSERT_AND_COUNT = f"""
WITH input AS (
    -- One row per position of the batch's array. Counting the positions, rather than
    -- unnesting the array, tells the planner how many events there are (the exact number in
    -- a plan for one batch, 1,000 in a generic one); told 100, it joined a thousand settled
    -- holds by nested loops, 0.4 s a batch.
    SELECT {INPUT}
    FROM ROWS FROM (jsonb_array_elements($1::jsonb),
        generate_series(1, jsonb_array_length($1::jsonb))) AS batch(e, position)
),
locked AS MATERIALIZED (
    -- The batch's counter rows, locked in organization-id order so that replicas writing
    -- batches of the same organizations cannot deadlock. FOR UPDATE returns the newest
    -- committed version of each row: everything below reads the counters from here.
    SELECT l.organization_id, l.period_start, l.period_end, l.period_unit,
        l.tokens_used_period
    FROM usage_limits l
    WHERE l.organization_id IN (SELECT organization_id FROM input)
    ORDER BY l.organization_id
    FOR UPDATE
),
inserted AS (
    -- Only events of provisioned (locked) organizations; the others become rejects.
    INSERT INTO usage_events (event_id, organization_id, user_id, occurred_at, provider, model,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        cache_write_1h_tokens, cost_usd, pricing_id, unpriced_reason, operation, request_id,
        metadata, reservation_id)
    SELECT i.event_id, i.organization_id, i.user_id, i.occurred_at, i.provider, i.model,
        i.input_tokens, i.output_tokens, i.cache_read_tokens, i.cache_write_tokens,
        i.cache_write_1h_tokens,
        -- NULL without a price row: an unknown cost is never stored as 0.
        {cost_sql("i", "p")},
        p.id, CASE WHEN p.id IS NULL THEN coalesce(i.unpriced_reason, '{NO_PRICE_ROW}') END,
        i.operation, i.request_id, i.metadata, i.reservation_id
    -- $2: the batch's distinct price rows, so only those are read (by primary key).
    FROM input i JOIN locked USING (organization_id)
        LEFT JOIN (SELECT * FROM model_pricing WHERE id = ANY($2::integer[])) p
        ON p.id = i.pricing_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, organization_id, occurred_at, input_tokens + output_tokens AS tokens,
        cost_usd, reservation_id
),
settled AS (
    -- Only events this statement inserted settle: a redelivery settles nothing twice.
    {SETTLE}
),
target AS (
    -- Per organization: the period its counters belong to after this batch and that
    -- period's usage before the batch.
    SELECT o.*, {PERIOD_END} AS new_end,
        CASE WHEN o.new_start = o.old_start THEN o.old_tokens ELSE 0 END AS before_tokens
    FROM (
        SELECT l.organization_id, count(*) AS inserted,
            CASE WHEN max(i.occurred_at) >= l.period_end
                THEN {NEW_START} ELSE l.period_start END AS new_start,
            l.period_unit, l.period_start AS old_start, l.tokens_used_period AS old_tokens
        FROM locked l JOIN inserted i USING (organization_id)
        GROUP BY l.organization_id, l.period_start, l.period_end, l.period_unit,
            l.tokens_used_period
    ) o
),
sums AS (
    -- Per organization, in one pass over its new events and the holds they settled. Late
    -- events of an earlier period are stored but not counted in the current one.
    SELECT t.organization_id,
        coalesce(sum(i.tokens) FILTER (WHERE c.counted), 0) AS tokens,
        coalesce(sum(i.cost_usd) FILTER (WHERE c.counted), 0) AS cost,
        count(*) FILTER (WHERE c.counted AND i.cost_usd IS NULL) AS unpriced,
        sum(i.tokens) FILTER (WHERE i.held) AS held_tokens,
        count(*) FILTER (WHERE i.held) AS holds
    FROM target t JOIN (
        SELECT organization_id, occurred_at, tokens, cost_usd, false AS held FROM inserted
        UNION ALL
        SELECT organization_id, NULL, tokens, NULL, true FROM settled
    ) i USING (organization_id)
    CROSS JOIN LATERAL (SELECT NOT i.held AND i.occurred_at >= t.new_start
        AND i.occurred_at < t.new_end AS counted) c
    GROUP BY t.organization_id
),
updated AS (
    UPDATE usage_limits u SET
        -- Credits pay for what the finished period used beyond the plan, once, at the roll.
        credits_tokens = CASE WHEN t.new_start = u.period_start THEN u.credits_tokens
            ELSE {CREDITS_AT_ROLL} END,
        tokens_used_period = CASE WHEN t.new_start = u.period_start
            THEN u.tokens_used_period ELSE 0 END + s.tokens,
        cost_usd_period = CASE WHEN t.new_start = u.period_start
            THEN u.cost_usd_period ELSE 0 END + s.cost,
        unpriced_events_period = CASE WHEN t.new_start = u.period_start
            THEN u.unpriced_events_period ELSE 0 END + s.unpriced,
        tokens_reserved = {RESERVED_AFTER_SETTLE},
        period_start = t.new_start,
        period_end = t.new_end,
        counters_updated_at = now()
    FROM target t JOIN sums s USING (organization_id)
    WHERE u.organization_id = t.organization_id
    RETURNING u.organization_id, u.plan, u.period_start, t.before_tokens,
        u.tokens_used_period AS after_tokens, u.token_limit + u.credits_tokens AS allowance,
        t.inserted, s.unpriced, s.holds
),
alerted AS (
    {insert_alerts_sql("updated")}
)
SELECT coalesce(sum(inserted), 0)::bigint AS inserted,
    coalesce(sum(unpriced), 0)::bigint AS unpriced,
    coalesce(sum(holds), 0)::bigint AS settled,
    (SELECT count(*) FROM alerted) AS alerts,
    (SELECT array_agg(DISTINCT organization_id) FROM input
        WHERE organization_id NOT IN (SELECT organization_id FROM locked)) AS unknown_orgs
FROM updated
"""

# Stored rows of a batch's event_ids that this transaction did not write itself (xmin is the
# inserting transaction): the duplicates, with the content to compare against.
STORED_DUPLICATES = (
    "SELECT * FROM usage_events WHERE event_id = ANY($1::uuid[])"
    " AND xmin <> pg_current_xact_id()::xid"
)

INSERT_REJECTS = (
    "INSERT INTO usage_event_rejects (organization_id, message_id, reason, reason_code,"
    " raw_data, attributes, delivery_attempt, published_at)"
    " SELECT o, m, r, c, d, a::jsonb, n, p FROM unnest($1::uuid[], $2::text[], $3::text[],"
    " $4::text[], $5::bytea[], $6::text[], $7::integer[], $8::timestamptz[])"
    " AS t(o, m, r, c, d, a, n, p)"
)


Unpriced = tuple[str, str, str]
# The organization of an unpriced event, and its (provider, model, reason).
UnpricedOf = tuple[uuid.UUID, Unpriced]
_event_values = attrgetter(*_EVENT_FIELDS)
# What orjson cannot write, serialized as the event model serializes its fields.
_ROWS_JSON: TypeAdapter[list[tuple[Any, ...]]] = TypeAdapter(list[tuple[Any, ...]])


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: int
    duplicates: int
    rejected: list[Reject]
    # Inserted events without a price, and the (provider, model, reason) the batch had.
    unpriced: int = 0
    unpriced_models: list[Unpriced] = field(default_factory=list)
    holds_settled: int = 0
    alerts_created: int = 0

    @property
    def conflicts(self) -> int:
        """Rejects that reuse a stored event_id with other content."""
        return sum(1 for r in self.rejected if r.reason_code == CONFLICTING_DUPLICATE)


def event_params(
    events: Sequence[UsageEvent], prices: PriceBook
) -> tuple[str, list[int], list[UnpricedOf]]:
    """Parameters of INSERT_AND_COUNT (the events as a JSON array of INPUT_COLUMNS rows, the
    distinct price rows), and the organization and (provider, model, reason) of each unpriced
    event.

    The row in force and its tier are chosen here; the cost itself is computed in SQL from
    that row, so no Decimal crosses the wire.
    """
    rows: list[tuple[Any, ...]] = []
    price_rows: set[int] = set()
    unpriced: list[UnpricedOf] = []
    for e in events:
        found = prices.lookup(e.provider, e.model, e.occurred_at, e.input_tokens)
        if found.price is None:
            rows.append((*_event_values(e), None, found.reason))
            unpriced.append(
                (e.organization_id, (e.provider, e.model, found.reason or NO_PRICE_ROW))
            )
        else:
            rows.append((*_event_values(e), found.price.id, None))
            if found.price.id is not None:
                price_rows.add(found.price.id)
    return _rows_json(rows), list(price_rows), unpriced


def _rows_json(rows: list[tuple[Any, ...]]) -> str:
    """The rows as one JSON array: orjson writes it in 40% of pydantic's time (0.9 against
    2.1 ms per 1,000 events); what it cannot write (an integer beyond 64 bits in metadata,
    say) pydantic writes, as the event model would."""
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:
        return _ROWS_JSON.dump_json(rows).decode()


def reject_columns(rejects: Sequence[Reject]) -> tuple[list[Any], ...]:
    """Column arrays for INSERT_REJECTS, in its parameter order."""
    return (
        [r.organization_id for r in rejects],
        [r.message.message_id for r in rejects],
        [r.reason for r in rejects],
        [r.reason_code for r in rejects],
        [r.message.data for r in rejects],
        [json.dumps(storable_attributes(r.message.attributes)) for r in rejects],
        [r.message.delivery_attempt for r in rejects],
        [r.message.publish_time for r in rejects],
    )


class BatchWriter:
    """Writes decoded batches; each ``write`` is one committed transaction."""

    def __init__(self, db: DatabaseManager, prices: Callable[[], PriceBook]) -> None:
        self._db = db
        self._prices = prices

    async def write(self, batch: Batch) -> WriteResult:
        """Commit the batch's events, counters and rejects together, or raise and change nothing."""
        events, rejects = batch.events, list(batch.rejects)
        inserted = conflicting = unpriced = settled = alerts = 0
        unpriced_models: list[Unpriced] = []
        async with self._db.driver() as conn, conn.transaction():
            if events:
                *params, unpriced_of = event_params(events, self._prices())
                row = await conn.fetchrow(INSERT_AND_COUNT, *params)
                inserted, unpriced, settled, alerts, unknown_orgs = row
                not_stored = set(unknown_orgs or ())
                unpriced_models = [u for org, u in unpriced_of if org not in not_stored]
                if not_stored:
                    events, unknown = _split_unknown(batch, not_stored)
                    rejects.extend(unknown)
                if inserted < len(events):
                    conflicts = await _conflicts(conn, events, batch.sources_of(events))
                    rejects.extend(conflicts)
                    conflicting = len(conflicts)
            if rejects:
                await conn.execute(INSERT_REJECTS, *reject_columns(rejects))
        duplicates = len(events) - inserted - conflicting + batch.duplicates_in_batch
        return WriteResult(
            inserted, duplicates, rejects, unpriced, unpriced_models, settled, alerts
        )


async def _conflicts(
    conn: Any, events: Sequence[UsageEvent], sources: dict[uuid.UUID, InboundMessage]
) -> list[Reject]:
    """Rejects for events whose event_id is stored with other content (both versions named)."""
    by_id = {e.event_id: e for e in events}
    rejects = []
    for row in await conn.fetch(STORED_DUPLICATES, list(by_id)):
        stored = dict(row)
        if isinstance(stored.get("metadata"), str):
            stored["metadata"] = json.loads(stored["metadata"], parse_float=Decimal)
        event = by_id[stored["event_id"]]
        reason = conflict_reason(stored, event)
        if reason is not None:
            rejects.append(Reject(sources[event.event_id], CONFLICTING_DUPLICATE, reason))
    return rejects


def _split_unknown(
    batch: Batch, unknown_orgs: set[uuid.UUID]
) -> tuple[list[UsageEvent], list[Reject]]:
    keep, unknown = batch.split_off(unknown_orgs)
    return keep, [
        Reject(
            message,
            "unknown_organization",
            f"organization_id: {event.organization_id} is not a provisioned organization",
        )
        for event, message in unknown
    ]
