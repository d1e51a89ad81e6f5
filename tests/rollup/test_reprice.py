"""Unpriced events are visible, and `reprice` prices them once a price row exists (promise 7)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import build_batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_rollup.__main__ import main as rollup_main
from biz2bricks_rollup.reconcile import find_drift, repair
from biz2bricks_rollup.reprice import reprice
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import assert_counter_derivable, make_event, message_for, provisioned_org


async def _one(db: DatabaseManager, sql: str, **params: Any) -> Any:
    async with db.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).one()


async def _write(db: DatabaseManager, *events: Any) -> None:
    book = await load_price_book(db, ModelNames())
    await BatchWriter(db, lambda: book).write(build_batch(message_for(e) for e in events))


OPERATOR_PRICE = text(
    "INSERT INTO model_pricing (provider, model, effective_from, input_per_mtok,"
    " output_per_mtok, origin, source, variant)"
    " VALUES ('openai', :m, '2024-01-01', :i, :o, 'operator', :source, :variant)"
)


async def _operator_price(
    db: DatabaseManager,
    model: str,
    input_per_mtok: str,
    output_per_mtok: str,
    *,
    source: str | None = None,
    variant: str = "",
) -> None:
    """An operator's price row for ``model`` (OpenAI), in force since 2024."""
    async with db.session() as session:
        await session.execute(
            OPERATOR_PRICE,
            {
                "m": model,
                "i": input_per_mtok,
                "o": output_per_mtok,
                "source": source,
                "variant": variant,
            },
        )


async def test_an_unpriced_event_is_counted_then_priced_once_by_reprice(
    db: DatabaseManager,
) -> None:
    # Given a fine-tuned model nobody priced yet, and one priced call
    org = await provisioned_org(db)
    model = f"acme-ft-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    unpriced = make_event(org, model=model, occurred_at=now - timedelta(seconds=30))
    priced = make_event(org, occurred_at=now - timedelta(seconds=30))
    await _write(db, unpriced, priced)
    today = unpriced.occurred_at.date()
    await run_rollup(db, [today], wait=True)

    # Then its cost is unknown, not $0, and every view says so
    event = await _one(
        db,
        "SELECT cost_usd, unpriced_reason FROM usage_events WHERE event_id = :e",
        e=unpriced.event_id,
    )
    assert (event.cost_usd, event.unpriced_reason) == (None, "unknown_model")
    usage = await UsageService(db).get_usage(org)
    assert usage.unpriced_events_period == 1
    summary_sql = (
        "SELECT cost_usd, unpriced_count FROM usage_daily_summaries"
        " WHERE organization_id = :o AND day = :d AND model = :m"
    )
    summary = await _one(db, summary_sql, o=org, d=today, m=model)
    assert (summary.cost_usd, summary.unpriced_count) == (Decimal(0), 1)

    # When an operator adds its price and a dry run, then a real run, re-price the unpriced
    await _operator_price(db, model, "1.5", "6", source="negotiated")
    preview = await reprice(db, first=today, last=today, unpriced_only=True, dry_run=True)
    still = await _one(
        db, "SELECT cost_usd FROM usage_events WHERE event_id = :e", e=unpriced.event_id
    )
    result = await reprice(db, first=today, last=today, unpriced_only=True)

    # Then the event, the period counters and the day's summary carry the cost
    expected = Decimal("1000") * Decimal("1.5") / 10**6 + Decimal("100") * 6 / 10**6
    assert preview.changed == 1
    assert still.cost_usd is None
    assert result.changed == 1
    event = await _one(
        db,
        "SELECT e.cost_usd, e.unpriced_reason, p.origin FROM usage_events e"
        " JOIN model_pricing p ON p.id = e.pricing_id WHERE e.event_id = :e",
        e=unpriced.event_id,
    )
    assert (event.cost_usd, event.unpriced_reason, event.origin) == (expected, None, "operator")
    usage = await UsageService(db).get_usage(org)
    assert usage.unpriced_events_period == 0
    await assert_counter_derivable(db, org)
    summary = await _one(db, summary_sql, o=org, d=today, m=model)
    assert (summary.cost_usd, summary.unpriced_count) == (expected, 0)
    audit = await _one(
        db,
        "SELECT details FROM audit_logs WHERE organization_id = :o AND action = 'usage.repriced'",
        o=org,
    )
    assert audit.details["events"] == 1

    # And a second run changes nothing
    again = await reprice(db, first=today, last=today, unpriced_only=True)
    assert again.changed == 0
    assert (await UsageService(db).get_usage(org)).cost_usd_period == usage.cost_usd_period


async def test_reprice_follows_a_changed_price_and_keeps_the_old_row(db: DatabaseManager) -> None:
    # Given an event priced by an operator row that is then retired for a new price
    org = await provisioned_org(db)
    model = f"acme-ft-{uuid.uuid4().hex[:8]}"
    await _operator_price(db, model, "1", "1")
    event = make_event(org, model=model)
    await _write(db, event)
    old = await _one(
        db, "SELECT cost_usd, pricing_id FROM usage_events WHERE event_id = :e", e=event.event_id
    )
    async with db.session() as session:
        await session.execute(
            text("UPDATE model_pricing SET retired_at = now() WHERE id = :id;"),
            {"id": old.pricing_id},
        )
        await session.execute(
            text(
                "INSERT INTO model_pricing (provider, model, effective_from, input_per_mtok,"
                " output_per_mtok, origin) VALUES ('openai', :m, '2024-01-01', 2, 2, 'operator')"
            ),
            {"m": model},
        )
    day = event.occurred_at.date()

    # When re-priced over its day
    result = await reprice(db, first=day, last=day)

    # Then it costs the new price, and the old row it named is still there
    new = await _one(
        db, "SELECT cost_usd, pricing_id FROM usage_events WHERE event_id = :e", e=event.event_id
    )
    assert result.changed >= 1
    assert new.cost_usd == 2 * old.cost_usd
    assert new.pricing_id != old.pricing_id
    assert await _one(db, "SELECT 1 FROM model_pricing WHERE id = :i", i=old.pricing_id)
    await assert_counter_derivable(db, org)


async def test_a_call_in_a_context_without_a_price_is_unpriced_until_its_variant_row_exists(
    db: DatabaseManager,
) -> None:
    # Given a model an operator priced for standard calls only, a batch call and a standard one
    org = await provisioned_org(db)
    model = f"acme-ft-{uuid.uuid4().hex[:8]}"
    await _operator_price(db, model, "2", "8")
    batch = make_event(org, model=model, processing="batch")
    standard = make_event(org, model=model)
    await _write(db, batch, standard)
    day = batch.occurred_at.date()
    await run_rollup(db, [day], wait=True)
    event_sql = (
        "SELECT cost_usd, unpriced_reason, price_variant FROM usage_events WHERE event_id = :e"
    )
    # Then the batch call is unpriced (never priced as the standard call), the standard one is
    assert tuple(await _one(db, event_sql, e=batch.event_id)) == (
        None,
        "unknown_variant",
        "processing=batch",
    )
    standard_cost = Decimal(1000 * 2 + 100 * 8) / 10**6
    assert (await _one(db, event_sql, e=standard.event_id)).cost_usd == standard_cost
    # When the operator adds the batch price (half) and re-prices the unpriced events
    await _operator_price(db, model, "1", "4", variant="processing=batch")
    result = await reprice(db, first=day, last=day, unpriced_only=True)
    # Then the batch call costs the batch price, the standard one did not move, and the day's
    # summaries (one per price context) and the counters agree
    assert result.changed == 1
    assert tuple(await _one(db, event_sql, e=batch.event_id)) == (
        standard_cost / 2,
        None,
        "processing=batch",
    )
    assert (await _one(db, event_sql, e=standard.event_id)).cost_usd == standard_cost
    async with db.engine.connect() as conn:
        summaries = (
            await conn.execute(
                text(
                    "SELECT price_variant, cost_usd, unpriced_count FROM usage_daily_summaries"
                    " WHERE organization_id = :o AND day = :d ORDER BY price_variant"
                ),
                {"o": org, "d": day},
            )
        ).all()
    assert [tuple(r) for r in summaries] == [
        ("", standard_cost, 0),
        ("processing=batch", standard_cost / 2, 0),
    ]
    assert (await UsageService(db).get_usage(org)).cost_usd_period == standard_cost * 3 / 2
    await assert_counter_derivable(db, org)


def test_reprice_command_dry_run_prints_the_differences(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert rollup_main(["reprice", "--unpriced", "--dry-run"]) == 0
    assert "would change" in capsys.readouterr().out
    assert rollup_main(["reprice", "--from", "2024-02-02", "--to", "2024-02-01"]) == 2


async def test_reconcile_repairs_a_drifted_unpriced_counter(db: DatabaseManager) -> None:
    # Given an organization with one unpriced event whose counter was tampered with
    org = await provisioned_org(db)
    await _write(db, make_event(org, model=f"acme-ft-{uuid.uuid4().hex[:8]}"))
    async with db.session() as session:
        await session.execute(
            text("UPDATE usage_limits SET unpriced_events_period = 5 WHERE organization_id = :o"),
            {"o": org},
        )

    # When reconcile looks and repairs
    drifted = [d for d in await find_drift(db) if d.organization_id == org]
    await repair(db, drifted)

    # Then it named the difference and the counter equals the events again
    assert "unpriced events 5 vs 1" in drifted[0].describe()
    await assert_counter_derivable(db, org)
