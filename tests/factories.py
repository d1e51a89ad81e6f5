"""Builders for events, messages and organizations, and the promise-2 check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from biz2bricks_consumer.batching import InboundMessage, build_batch
from biz2bricks_consumer.writer import BatchWriter, WriteResult
from biz2bricks_core import DatabaseManager, UsageEvent, UsageService, encode_event
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book


def make_event(organization_id: uuid.UUID, **overrides: Any) -> UsageEvent:
    """A valid event of the organization, occurring a minute ago unless overridden."""
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "organization_id": organization_id,
        "occurred_at": datetime.now(UTC) - timedelta(minutes=1),
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    fields.update(overrides)
    return UsageEvent(**fields)


def message_for(event: UsageEvent, ack_id: str | None = None) -> InboundMessage:
    """The InboundMessage a pull would give for this event."""
    data, attributes = encode_event(event)
    return InboundMessage(
        ack_id=ack_id or uuid.uuid4().hex,
        message_id=uuid.uuid4().hex[:16],
        data=data,
        attributes=attributes,
        publish_time_s=datetime.now(UTC).timestamp(),
    )


def raw_message(data: bytes, attributes: dict[str, str] | None = None) -> InboundMessage:
    """An arbitrary (possibly poison) message."""
    return InboundMessage(
        ack_id=uuid.uuid4().hex,
        message_id=uuid.uuid4().hex[:16],
        data=data,
        attributes=attributes if attributes is not None else {},
    )


async def provisioned_org(db: DatabaseManager, plan: str = "pro") -> uuid.UUID:
    """A new organization with a usage_limits row on ``plan``."""
    org = uuid.uuid4()
    await UsageService(db).provision_organization(org, plan=plan, name=f"org {org.hex[:6]}")
    return org


async def write_events(db: DatabaseManager, events: list[UsageEvent]) -> WriteResult:
    """Commit events through the consumer's real write path (one batch)."""
    book = await load_price_book(db, ModelNames())
    return await BatchWriter(db, lambda: book).write(build_batch(message_for(e) for e in events))


async def use_tokens(db: DatabaseManager, org: uuid.UUID, tokens: int, **overrides: Any) -> None:
    """Usage that really happened: one event of ``tokens`` tokens, written as the consumer does."""
    await write_events(db, [make_event(org, input_tokens=tokens, output_tokens=0, **overrides)])


async def counters(db: DatabaseManager, org: uuid.UUID) -> dict[str, Any]:
    """The organization's usage_limits row as a dict."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM usage_limits WHERE organization_id = :o"), {"o": org}
            )
        ).one()
    return dict(row._mapping)


async def event_count(db: DatabaseManager, org: uuid.UUID) -> int:
    """Rows in usage_events for the organization."""
    async with db.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM usage_events WHERE organization_id = :o"),
                    {"o": org},
                )
            ).scalar_one()
        )


async def assert_counter_derivable(db: DatabaseManager, org: uuid.UUID) -> int:
    """Promise 2: the period counters equal the sums over the events in the current period
    (voided events count nowhere)."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT l.tokens_used_period, l.cost_usd_period, l.unpriced_events_period,"
                    " coalesce(sum(e.input_tokens + e.output_tokens), 0) AS tokens,"
                    " coalesce(sum(e.cost_usd), 0) AS cost,"
                    " count(e.event_id) FILTER (WHERE e.cost_usd IS NULL) AS unpriced"
                    " FROM usage_limits l LEFT JOIN usage_events e"
                    "  ON e.organization_id = l.organization_id"
                    "  AND e.occurred_at >= l.period_start AND e.occurred_at < l.period_end"
                    "  AND e.voided_at IS NULL"
                    " WHERE l.organization_id = :o"
                    " GROUP BY l.tokens_used_period, l.cost_usd_period, l.unpriced_events_period"
                ),
                {"o": org},
            )
        ).one()
    assert row.tokens_used_period == row.tokens, f"counter {row.tokens_used_period} != {row.tokens}"
    assert row.cost_usd_period == row.cost, f"cost {row.cost_usd_period} != {row.cost}"
    assert row.unpriced_events_period == row.unpriced, "unpriced counter differs from the events"
    return int(row.tokens)
