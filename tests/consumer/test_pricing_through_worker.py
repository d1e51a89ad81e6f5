"""Promise 7 through the real worker: the stored cost is genai-prices' price of the call.

Every name in tests/pricing/cases.py, times four token mixes (plain, cache reads, 5-minute and
1-hour cache writes, a long context over the tier thresholds), goes through the emulator and
the worker; each stored cost must equal ``genai_prices.calc_price`` within 1e-6 relative (or,
for Claude Sonnet 4 above 200K input tokens, which genai-prices 0.2.3 lacks, Anthropic's
published long-context price), and be reproducible from the model_pricing row the event names.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage, calc_price, extract_usage
from sqlalchemy import select, text

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import DatabaseManager, UsageEvent
from biz2bricks_core.models import ModelPricingModel
from biz2bricks_core.price_rows import to_token_price
from biz2bricks_core.price_supplements import SUPPLEMENTS
from biz2bricks_core.pricing import event_cost
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.factories import assert_counter_derivable, counters, make_event, provisioned_org
from tests.pricing.cases import MIXES, NAMES, UNPRICED
from tests.pricing.recorded_usage import RECORDED

RELATIVE = Decimal("1e-6")


def _published(provider: str, model: str, event: UsageEvent) -> Decimal | None:
    """The provider's published price where genai-prices lacks a tier (named in
    biz2bricks_core.price_supplements: Claude Sonnet 4 above 200K input tokens), computed here
    from the page's figures; None where genai-prices has the price."""
    for tier in SUPPLEMENTS:
        if (tier.provider, tier.model) != (provider, model):
            continue
        if event.input_tokens <= tier.above_input_tokens:
            return None
        assert tier.cache_read_per_mtok is not None
        assert tier.cache_write_per_mtok is not None
        assert tier.cache_write_1h_per_mtok is not None
        cached = event.cache_read_tokens + event.cache_write_tokens + event.cache_write_1h_tokens
        per_mtok = (
            (event.input_tokens - cached) * tier.input_per_mtok
            + event.cache_read_tokens * tier.cache_read_per_mtok
            + event.cache_write_tokens * tier.cache_write_per_mtok
            + event.cache_write_1h_tokens * tier.cache_write_1h_per_mtok
            + event.output_tokens * tier.output_per_mtok
        )
        return per_mtok / 1_000_000
    return None


def _expected(provider: str, model: str, event: UsageEvent) -> Decimal:
    at = event.occurred_at
    usage = Usage(
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cache_read_tokens=event.cache_read_tokens,
        cache_write_tokens=event.cache_write_tokens,
        cache_write_1h_tokens=event.cache_write_1h_tokens,
    )
    price = calc_price(usage, model, provider_id=provider, genai_request_timestamp=at)
    # The name as genai-prices resolves it (a dated id or an alias of claude-sonnet-4-0)
    published = _published(provider, price.model.id, event)
    return price.total_price if published is None else published


async def _stored(db: DatabaseManager, org: uuid.UUID) -> dict[uuid.UUID, Any]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT event_id, cost_usd, pricing_id, unpriced_reason FROM usage_events"
                " WHERE organization_id = :o"
            ),
            {"o": org},
        )
        return {r.event_id: r for r in result}


async def test_every_name_and_token_mix_costs_what_genai_prices_says(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
) -> None:
    # Given one event per name and token mix, and a few names no price covers
    org = await provisioned_org(db, plan="business")
    at = datetime.now(UTC) - timedelta(minutes=1)
    cases: dict[uuid.UUID, tuple[str, str, str, str, str]] = {}
    events = []
    for provider, model, ref_provider, ref_model in NAMES:
        for mix, inp, out, read, write, write_1h in MIXES:
            event = make_event(
                org,
                provider=provider,
                model=model,
                occurred_at=at,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=read,
                cache_write_tokens=write,
                cache_write_1h_tokens=write_1h,
            )
            cases[event.event_id] = (provider, model, ref_provider, ref_model, mix)
            events.append(event)
    unpriced = [make_event(org, provider=p, model=m, occurred_at=at) for p, m in UNPRICED]
    assert len(NAMES) >= 150

    # When they go through the emulator and the worker
    await asyncio.to_thread(publish, events + unpriced)
    worker = Worker(consumer_settings(batch_max_messages=500), db)
    await asyncio.wait_for(worker.run(), timeout=120)
    worker.source.close()

    # Then each cost is genai-prices' and reproducible from the row the event names
    stored = await _stored(db, org)
    async with db.session() as session:
        rows = {r.id: to_token_price(r) for r in await session.scalars(select(ModelPricingModel))}
    wrong = []
    by_id = {e.event_id: e for e in events}
    for event_id, (provider, model, ref_provider, ref_model, mix) in cases.items():
        row, event = stored[event_id], by_id[event_id]
        expected = _expected(ref_provider, ref_model, event)
        if row.cost_usd is None or abs(row.cost_usd - expected) > RELATIVE * expected:
            wrong.append(f"{provider}/{model} {mix}: stored {row.cost_usd}, expected {expected}")
            continue
        tokens = event.model_dump(
            include={
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "cache_write_1h_tokens",
            }
        )
        assert event_cost(rows[row.pricing_id], **tokens) == row.cost_usd
    assert not wrong, "\n".join(wrong)

    # And the unknown names are stored without a cost, with a reason, and counted
    for event in unpriced:
        row = stored[event.event_id]
        assert (row.cost_usd, row.pricing_id) == (None, None)
        assert row.unpriced_reason in ("unknown_model", "unknown_provider")
    assert worker.metrics.value("usage_consumer_events_unpriced_total") == len(UNPRICED)
    assert (await counters(db, org))["unpriced_events_period"] == len(UNPRICED)
    await assert_counter_derivable(db, org)


async def test_recorded_provider_usage_is_billed_like_genai_prices_bills_the_response(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    pubsub_names: PubSubNames,
    tmp_path: Path,
) -> None:
    # Given real response shapes recorded through UsageProducer.record_usage
    org = await provisioned_org(db)
    settings = ProducerSettings(
        project_id=pubsub_names.project_id, topic=pubsub_names.topic, spool_dir=tmp_path
    )
    at = datetime.now(UTC) - timedelta(minutes=1)
    expected = {}
    with UsageProducer(settings) as producer:
        for provider, model, (gp_provider, flavor), body, _ in RECORDED:
            usage = body.get("usage", body.get("usageMetadata"))
            event_id = producer.record_usage(
                organization_id=org, provider=provider, model=model, usage=usage, occurred_at=at
            )
            extracted = extract_usage(body, provider_id=gp_provider, api_flavor=flavor)
            expected[event_id] = calc_price(
                extracted.usage, model, provider_id=provider, genai_request_timestamp=at
            ).total_price
        assert producer.flush(timeout=30)

    # When the worker writes them
    worker = Worker(consumer_settings(), db)
    await asyncio.wait_for(worker.run(), timeout=120)
    worker.source.close()

    # Then each costs what genai-prices computes from the whole response
    stored = await _stored(db, org)
    for event_id, price in expected.items():
        assert stored[event_id].cost_usd is not None
        assert abs(stored[event_id].cost_usd - price) <= RELATIVE * price, event_id
