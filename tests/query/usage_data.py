"""Random usage of one organization over three UTC days, and the GROUP BY it must equal.

Events are inserted as the consumer inserts them (``received_at`` is the inserting
transaction's ``now()``: those of past days are late arrivals), some without a price, some
without a user or an operation. ``expected`` aggregates the inserted
events in Python with windows computed independently of biz2bricks_core.usage_windows.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from biz2bricks_core import DatabaseManager, UsageEvent, UsageRow
from tests.factories import write_events

USERS = [uuid.UUID(int=0xA11CE000 + n) for n in range(5)]
OPERATIONS = ["extract", "classify", "summarize", "chat"]
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-pro"),
    # Not in the price catalogue: its events are unpriced (cost NULL, never $0).
    ("acme", "acme-docs-ft-2"),
]

# Loaded back after writing: the query's truth is the rows the consumer stored.
STORED = text(
    "SELECT occurred_at, provider, model, user_id, operation, input_tokens, output_tokens,"
    " cache_read_tokens, cache_write_tokens, cost_usd, price_variant FROM usage_events"
    " WHERE organization_id = :o AND voided_at IS NULL ORDER BY occurred_at"
)


@dataclass(frozen=True)
class Event:
    """One inserted event (the fields the query reads)."""

    occurred_at: datetime
    provider: str
    model: str
    user_id: uuid.UUID | None
    operation: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None
    # The price context (biz2bricks_core.pricing.price_variant): "" for a standard call.
    price_variant: str = ""

    def dimension(self, name: str) -> str | None:
        value = getattr(self, name)
        return None if value is None else str(value)


def random_events(rng: random.Random, first: datetime, last: datetime, n: int) -> list[Event]:
    """``n`` random events occurring in ``[first, last)``."""
    span = (last - first).total_seconds()
    out = []
    for _ in range(n):
        occurred = first + timedelta(seconds=rng.uniform(0, span))
        occurred = occurred.replace(microsecond=0)
        provider, model = rng.choice(MODELS)
        input_tokens = rng.randint(10, 5000)
        cache_read = rng.randint(0, input_tokens // 2)
        out.append(
            Event(
                occurred_at=occurred,
                provider=provider,
                model=model,
                user_id=rng.choice([*USERS, None]),
                operation=rng.choice([*OPERATIONS, None]),
                input_tokens=input_tokens,
                output_tokens=rng.randint(1, 2000),
                cache_read_tokens=cache_read,
                cache_write_tokens=rng.randint(0, input_tokens - cache_read),
                cost_usd=None,
                # Some calls through the providers' batch APIs: their own price rows.
                price_variant=rng.choice(["", "", "", "processing=batch"]),
            )
        )
    return out


async def insert_events(db: DatabaseManager, org: uuid.UUID, events: Iterable[Event]) -> None:
    """Write ``events`` for ``org`` through the consumer's write path (received now, priced,
    counted in the organization's counters)."""
    made = [
        UsageEvent(
            event_id=uuid.uuid4(),
            organization_id=org,
            occurred_at=e.occurred_at,
            provider=e.provider,
            model=e.model,
            user_id=e.user_id,
            operation=e.operation,
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cache_read_tokens=e.cache_read_tokens,
            cache_write_tokens=e.cache_write_tokens,
            processing="batch" if e.price_variant == "processing=batch" else None,
        )
        for e in events
    ]
    for n in range(0, len(made), 500):
        result = await write_events(db, made[n : n + 500])
        assert result.inserted == len(made[n : n + 500]), result


async def stored_events(db: DatabaseManager, org: uuid.UUID) -> list[Event]:
    """The organization's events as stored (with the cost the consumer computed)."""
    async with db.engine.connect() as conn:
        return [Event(**row._mapping) for row in await conn.execute(STORED, {"o": org})]


def _window(moment: datetime, window: str | None, zone: ZoneInfo) -> tuple[Any, Any]:
    if window is None:
        return None, None
    local = moment.astimezone(zone)
    if window == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        return start.astimezone(UTC), (start + timedelta(hours=1)).astimezone(UTC)
    day = local.date() if window == "day" else local.date().replace(day=1)
    if window == "day":
        after = day + timedelta(days=1)
    else:
        after = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return (
        datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC),
        datetime.combine(after, time.min, tzinfo=zone).astimezone(UTC),
    )


def expected(
    events: Sequence[Event],
    *,
    start: datetime,
    end: datetime,
    window: str | None = None,
    group_by: Sequence[str] = (),
    filters: Mapping[str, Sequence[str | None]] | None = None,
    time_zone: str = "UTC",
) -> list[tuple[Any, ...]]:
    """The GROUP BY of ``events`` in ``[start, end)``, as ``as_tuples`` gives rows."""
    zone = ZoneInfo(time_zone)
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, 0, Decimal(0), 0])
    for e in events:
        if not (start <= e.occurred_at < end):
            continue
        if filters and any(e.dimension(d) not in values for d, values in filters.items()):
            continue
        key = (*_window(e.occurred_at, window, zone), *(e.dimension(d) for d in group_by))
        acc = sums[key]
        acc[0] += 1
        acc[1] += e.input_tokens
        acc[2] += e.output_tokens
        acc[3] += e.cache_read_tokens
        acc[4] += e.cache_write_tokens
        if e.cost_usd is None:
            acc[6] += 1
        else:
            acc[5] += e.cost_usd
    rows = []
    for key, (n, i, o, cr, cw, cost, unpriced) in sums.items():
        rows.append((*key, n, i, o, cr, cw, i + o, None if unpriced else cost, unpriced))
    return sorted(rows, key=_order)


def as_tuples(rows: Iterable[UsageRow], group_by: Sequence[str]) -> list[tuple[Any, ...]]:
    """Query rows in the shape of ``expected``'s."""
    out = [
        (
            r.window_start,
            r.window_end,
            *(r.groups[d] for d in group_by),
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.total_tokens,
            r.cost_usd,
            r.unpriced_events,
        )
        for r in rows
    ]
    return sorted(out, key=_order)


def _order(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if v is None else str(v) for v in row)


async def settle_watermarks(db: DatabaseManager) -> None:
    """Move each rolled-up day's watermark to its run's start: as if the run had come
    LATE_MARGIN after the events were written (the margin covers transactions in flight during
    a run; in a test, every insert committed before the run began)."""
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE usage_rollup_days SET watermark = rolled_up_at"))
