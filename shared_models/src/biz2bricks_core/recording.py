"""Recording events: the one statement that stores a batch of events and counts them.

It locks the batch's counter rows in organization order (biz2bricks_core.counters), inserts
the events of the organizations it locked (ON CONFLICT DO NOTHING: a redelivery inserts
nothing and so changes nothing), and from the rows it actually inserted adds tokens and cost
to each organization's current period, rolling the period when an event is past its end;
settles the holds the new events name and writes the alert thresholds their usage crossed.
What the batch took beyond a plan is paid from the organization's cached live grants in the
same counter update and owed by them (``credits.owed``); where that cache is stale, the grant
rows pay it (``credits.refresh_grants`` then ``credits.BURN``), in the same transaction. Every
billing rule it applies is composed from its home module; it re-writes none.

The consumer's writer records every batch through ``record_events``; an amendment
(biz2bricks_core.corrections) records its replacing event through it too, so an amended
event is stored, priced and counted exactly as the consumer would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
from pydantic import TypeAdapter

from biz2bricks_core.alerts import insert_alerts_sql
from biz2bricks_core.allowance import allowance_sql
from biz2bricks_core.counters import lock_counters_sql
from biz2bricks_core.counting import event_tokens_sql, unpriced_sql
from biz2bricks_core.credits import (
    BURN,
    beyond_plan_sql,
    grants_cache_valid_sql,
    live_grants_remaining_sql,
    refresh_grants,
)
from biz2bricks_core.event_ids import event_id_month_sql
from biz2bricks_core.events import UsageEvent
from biz2bricks_core.holds import reserved_after_settle_sql, settle_holds_sql
from biz2bricks_core.periods import (
    counter_after_roll_sql,
    in_period_sql,
    period_end_sql,
    period_start_after_sql,
)
from biz2bricks_core.pricing import (
    NO_PRICE_ROW,
    PriceBook,
    cost_sql,
    price_variant,
    unpriced_reason_sql,
)

__all__ = [
    "INPUT_COLUMNS",
    "INSERT_AND_COUNT",
    "Recorded",
    "Unpriced",
    "event_params",
    "record_events",
]

# Statements run on the asyncpg connection under a pooled SQLAlchemy one: SQLAlchemy's
# execute and result layers cost ~1 ms per batch here, a fifth of the batch's write time.
# asyncpg prepares each statement once per connection, and after five runs PostgreSQL plans
# it once for any batch (a generic plan). Forcing a plan per batch (plan_cache_mode) was
# measured slower in every case: 0.62 against 0.68x raw at 1,000 events per batch, and at 250
# events with holds 0.16 against 0.54x (the per-batch plan scanned the holds table).
#
# The statement re-writes no billing rule: each is composed from its home in biz2bricks_core
# (periods, allowance, counting, credits, holds, alerts, pricing, the counters' lock order).
LOCK = lock_counters_sql(
    "SELECT organization_id FROM input",
    "l.organization_id, l.period_start, l.period_end, l.period_unit, l.tokens_used_period,"
    " l.token_limit, l.grants_remaining, l.grants_next_change, l.grants_pending,"
    " l.grants_pending_period",
)
PERIOD_END = period_end_sql("o.new_start", "o.period_unit")
NEW_START = period_start_after_sql("l.period_start", "l.period_end", "n.newest", "l.period_unit")
COUNTED = in_period_sql("i.occurred_at", "t.new_start", "t.new_end")
SAME_PERIOD = "t.new_start = u.period_start"
ROLLED_TOKENS = counter_after_roll_sql("u.tokens_used_period", SAME_PERIOD, "s.tokens")
ROLLED_COST = counter_after_roll_sql("u.cost_usd_period", SAME_PERIOD, "s.cost")
ROLLED_UNPRICED = counter_after_roll_sql("u.unpriced_events_period", SAME_PERIOD, "s.unpriced")
# From the locked row (carried in target): the tokens the batch takes beyond the plan, and
# whether the grants' cache can pay them (exact now, and what it owes, if anything, was paid
# in this period): then it pays what it holds, and the grants owe it. Computed in the update's
# own FROM: as a CTE joined to it, it cost the plain write path 10%.
BEYOND_PLAN = beyond_plan_sql("t.before_tokens", "t.before_tokens + s.tokens", "t.token_limit")
FROM_CACHE = (
    f"{grants_cache_valid_sql('t')}"
    " AND (t.grants_pending = 0 OR t.grants_pending_period = t.new_start)"
)
PAID = f"(CASE WHEN {FROM_CACHE} THEN least({BEYOND_PLAN}, t.grants_remaining) ELSE 0 END)"
# Where the cache cannot pay and live grants may hold tokens: the grant rows pay.
FROM_ROWS = (
    f"(NOT ({FROM_CACHE}) AND (t.grants_remaining > 0 OR NOT {grants_cache_valid_sql('t')}))"
)
ROLLED_GRANTS_CONSUMED = counter_after_roll_sql("u.grants_consumed_period", SAME_PERIOD, "b.paid")
# After the UPDATE (RETURNING sees the new row): the allowance the alerts measure against.
ALLOWANCE = allowance_sql(
    "u.token_limit", "u.grants_consumed_period", live_grants_remaining_sql("u")
)
RESERVED_AFTER_SETTLE = reserved_after_settle_sql("u.tokens_reserved", "h.held_tokens")
SETTLE = settle_holds_sql("inserted")
# The partition key of usage_events (biz2bricks_core.event_partitions), from the id alone.
ID_MONTH = event_id_month_sql("i.event_id")

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
    ("web_search_requests", "bigint"),
    ("price_variant", "text"),
    ("pricing_id", "integer"),
    ("unpriced_reason", "text"),
)
# The event's own fields; then its price context, composed once (price_variant), and the
# price row resolved for it.
_EVENT_FIELDS = tuple(name for name, _ in INPUT_COLUMNS[:-3])


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
    {LOCK}
),
inserted AS (
    -- Only events of provisioned (locked) organizations; the others become rejects.
    INSERT INTO usage_events (event_id, organization_id, user_id, occurred_at, provider, model,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        cache_write_1h_tokens, cost_usd, pricing_id, unpriced_reason, operation, request_id,
        metadata, reservation_id, price_variant, web_search_requests, id_month)
    SELECT i.event_id, i.organization_id, i.user_id, i.occurred_at, i.provider, i.model,
        i.input_tokens, i.output_tokens, i.cache_read_tokens, i.cache_write_tokens,
        i.cache_write_1h_tokens,
        -- NULL without a price row: an unknown cost is never stored as 0.
        {cost_sql("i", "p")},
        p.id, {unpriced_reason_sql("p.id", "i.unpriced_reason")},
        i.operation, i.request_id, i.metadata, i.reservation_id, i.price_variant,
        i.web_search_requests, {ID_MONTH}
    -- $2: the batch's distinct price rows, so only those are read (by primary key).
    FROM input i JOIN locked USING (organization_id)
        LEFT JOIN (SELECT * FROM model_pricing WHERE id = ANY($2::integer[])) p
        ON p.id = i.pricing_id
    ON CONFLICT (event_id, id_month) DO NOTHING
    RETURNING event_id, organization_id, occurred_at,
        {event_tokens_sql("input_tokens", "output_tokens")} AS tokens, cost_usd, reservation_id
),
settled AS (
    -- Only events this statement inserted settle: a redelivery settles nothing twice.
    {SETTLE}
),
target AS (
    -- Per organization: the period its counters belong to after this batch and that
    -- period's usage before the batch. The new events are grouped by organization alone,
    -- then joined to its locked row (grouping the join by the row's ten columns cost 0.5 ms).
    SELECT o.*, {PERIOD_END} AS new_end,
        {counter_after_roll_sql("o.old_tokens", "o.new_start = o.old_start", "0")} AS before_tokens
    FROM (
        SELECT l.organization_id, n.inserted,
            {NEW_START} AS new_start,
            l.period_unit, l.period_start AS old_start, l.tokens_used_period AS old_tokens,
            l.token_limit, l.grants_remaining, l.grants_next_change, l.grants_pending,
            l.grants_pending_period
        FROM (
            SELECT organization_id, count(*) AS inserted, max(occurred_at) AS newest
            FROM inserted GROUP BY organization_id
        ) n JOIN locked l USING (organization_id)
    ) o
),
sums AS (
    -- Per organization, in one pass over its new events. Late events of an earlier period
    -- are stored but not counted in the current one.
    SELECT t.organization_id,
        -- bigint, not sum()'s numeric: the counters' arithmetic below stays in integers.
        coalesce(sum(i.tokens) FILTER (WHERE c.counted), 0)::bigint AS tokens,
        coalesce(sum(i.cost_usd) FILTER (WHERE c.counted), 0) AS cost,
        count(*) FILTER (WHERE c.counted AND {unpriced_sql("i.cost_usd")}) AS unpriced
    FROM target t JOIN inserted i USING (organization_id)
    CROSS JOIN LATERAL (SELECT {COUNTED} AS counted) c
    GROUP BY t.organization_id
),
held AS (
    -- Per organization, the holds its new events settled (none in most batches: aggregated
    -- apart, they do not double the rows of the events' aggregate when every event has one).
    SELECT organization_id, sum(tokens)::bigint AS held_tokens, count(*) AS holds
    FROM settled GROUP BY organization_id
),
updated AS (
    UPDATE usage_limits u SET
        grants_consumed_period = {ROLLED_GRANTS_CONSUMED},
        grants_remaining = u.grants_remaining - b.paid,
        grants_pending = u.grants_pending + b.paid,
        grants_pending_period = CASE WHEN b.paid > 0 THEN t.new_start
            ELSE u.grants_pending_period END,
        tokens_used_period = {ROLLED_TOKENS},
        cost_usd_period = {ROLLED_COST},
        unpriced_events_period = {ROLLED_UNPRICED},
        tokens_reserved = {RESERVED_AFTER_SETTLE},
        period_start = t.new_start,
        period_end = t.new_end,
        counters_updated_at = now()
    FROM target t JOIN sums s USING (organization_id)
        LEFT JOIN held h USING (organization_id)
        -- Computed once per organization (OFFSET 0 keeps the planner from copying the
        -- expressions into each of their five uses: 1.5 ms a batch of 1,000).
        CROSS JOIN LATERAL (SELECT {BEYOND_PLAN} AS beyond_plan, {PAID} AS paid,
            {FROM_ROWS} AS from_rows OFFSET 0) b
    WHERE u.organization_id = t.organization_id
    RETURNING u.organization_id, u.plan, u.period_start, t.before_tokens,
        u.tokens_used_period AS after_tokens, {ALLOWANCE} AS allowance,
        b.beyond_plan, b.paid, b.from_rows,
        t.inserted, s.unpriced, h.holds
),
alerted AS (
    {insert_alerts_sql("updated")}
)
SELECT coalesce(sum(inserted), 0)::bigint AS inserted,
    coalesce(sum(unpriced), 0)::bigint AS unpriced,
    coalesce(sum(holds), 0)::bigint AS settled,
    (SELECT count(*) FROM alerted) AS alerts,
    -- The batch's organizations without counters ($3: how many it names), read only when
    -- the locked rows are fewer (an anti-join in every batch cost 0.35 ms).
    CASE WHEN (SELECT count(*) FROM locked) < $3::integer THEN
        (SELECT array_agg(DISTINCT organization_id) FROM input
            WHERE organization_id NOT IN (SELECT organization_id FROM locked)) END
        AS unknown_orgs,
    coalesce(sum(paid), 0)::bigint AS paid,
    -- Organizations whose usage went beyond the plan and whose cache could not pay: the
    -- grant rows pay (biz2bricks_core.credits.BURN), in this transaction.
    array_agg(organization_id ORDER BY organization_id)
        FILTER (WHERE beyond_plan > 0 AND from_rows) AS burn_orgs,
    array_agg(beyond_plan ORDER BY organization_id)
        FILTER (WHERE beyond_plan > 0 AND from_rows) AS burn_tokens
FROM updated
"""

Unpriced = tuple[str, str, str]
# The organization of an unpriced event, and its (provider, model, reason).
UnpricedOf = tuple[uuid.UUID, Unpriced]
# An event's stored fields in INPUT_COLUMNS order and its price context, read from the
# model's __dict__ at once (half the time of reading 16 attributes: 0.3 ms a batch of 1,000),
# and the positions the price lookup reads.
_event_values = itemgetter(*_EVENT_FIELDS)
_event_context = itemgetter("processing", "service_tier", "speed", "route")
_ORG, _PROVIDER, _MODEL, _AT, _INPUT, _SEARCHES = (
    _EVENT_FIELDS.index(name)
    for name in (
        "organization_id",
        "provider",
        "model",
        "occurred_at",
        "input_tokens",
        "web_search_requests",
    )
)


# What orjson cannot write, serialized as the event model serializes its fields.
_ROWS_JSON: TypeAdapter[list[tuple[Any, ...]]] = TypeAdapter(list[tuple[Any, ...]])


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record_events`` did in the caller's transaction."""

    inserted: int
    unpriced: int
    holds_settled: int
    alerts_created: int
    grants_consumed: int
    # Organizations that have no usage_limits row: their events were not stored.
    unknown_organizations: frozenset[uuid.UUID]
    # The (provider, model, reason) of each unpriced event of a known organization.
    unpriced_models: list[Unpriced]


async def record_events(conn: Any, events: Sequence[UsageEvent], prices: PriceBook) -> Recorded:
    """Store and count ``events`` on ``conn`` (an asyncpg connection in a transaction)."""
    *params, unpriced_of = event_params(events, prices)
    row = await conn.fetchrow(INSERT_AND_COUNT, *params)
    inserted, unpriced, settled, alerts, unknown_orgs, paid, burn_orgs, burn_tokens = row
    consumed = int(paid)
    if burn_orgs:  # the rows pay: first what they owe and the expiries, then this batch's
        await refresh_grants(conn, burn_orgs)
        burned = await conn.fetch(BURN, burn_orgs, burn_tokens)
        consumed += sum(int(r["tokens"]) for r in burned)
    unknown = frozenset(unknown_orgs or ())
    return Recorded(
        inserted=int(inserted),
        unpriced=int(unpriced),
        holds_settled=int(settled),
        alerts_created=int(alerts),
        grants_consumed=consumed,
        unknown_organizations=unknown,
        unpriced_models=[u for org, u in unpriced_of if org not in unknown],
    )


def event_params(
    events: Sequence[UsageEvent], prices: PriceBook
) -> tuple[str, list[int], int, list[UnpricedOf]]:
    """Parameters of INSERT_AND_COUNT (the events as a JSON array of INPUT_COLUMNS rows, the
    distinct price rows, the number of distinct organizations), and the organization and
    (provider, model, reason) of each unpriced event.

    The row in force and its tier are chosen here; the cost itself is computed in SQL from
    that row, so no Decimal crosses the wire.
    """
    rows: list[tuple[Any, ...]] = []
    price_rows: set[int] = set()
    unpriced: list[UnpricedOf] = []
    lookup = prices.lookup
    for e in events:
        fields = e.__dict__
        values = _event_values(fields)
        variant = price_variant(*_event_context(fields))
        found = lookup(
            values[_PROVIDER],
            values[_MODEL],
            values[_AT],
            values[_INPUT],
            variant,
            values[_SEARCHES],
        )
        price = found.price
        if price is None:
            rows.append((*values, variant, None, found.reason))
            unpriced.append(
                (values[_ORG], (values[_PROVIDER], values[_MODEL], found.reason or NO_PRICE_ROW))
            )
        else:
            rows.append((*values, variant, price.id, None))
            if price.id is not None:
                price_rows.add(price.id)
    # Counted by the ids' integers: a UUID's own hash is Python code (0.4 ms a batch).
    organizations = len({row[_ORG].int for row in rows})
    return _rows_json(rows), list(price_rows), organizations, unpriced


def _rows_json(rows: list[tuple[Any, ...]]) -> str:
    """The rows as one JSON array: orjson writes it in 40% of pydantic's time (0.9 against
    2.1 ms per 1,000 events); what it cannot write (an integer beyond 64 bits in metadata,
    say) pydantic writes, as the event model would."""
    try:
        return orjson.dumps(rows, default=_uuid_text).decode()
    except orjson.JSONEncodeError:
        return _ROWS_JSON.dump_json(rows).decode()


def _uuid_text(value: Any) -> str:
    """A UUID of a subclass orjson does not write itself (asyncpg's, in an event built from a
    stored row), as text; anything else stays unwritable."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError
