"""Promise 7 for the whole call: batch, service tiers, speed, region and web searches.

Each response of tests/pricing/context_usage.py goes through ``UsageProducer.record_usage``
(as a dict, as nested attribute objects and as nested dataclasses), the emulator and the
real worker into PostgreSQL; the stored cost equals genai-prices' price of the call in the
same context, or the provider's published price where genai-prices lacks it, and a context
the catalogue has no price for is stored unpriced with its reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from genai_prices import Usage, calc_price
from sqlalchemy import text

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import DatabaseManager
from biz2bricks_producer import ProducerSettings, UsageProducer
from biz2bricks_producer.usage_adapters import token_fields
from tests.conftest import PubSubNames
from tests.factories import assert_counter_derivable, provisioned_org
from tests.pricing.context_usage import CASES, ContextCase

RELATIVE = Decimal("1e-6")


def as_attributes(value: Any) -> Any:
    """The payload as nested attribute objects (SimpleNamespace), as wrappers return it."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: as_attributes(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_attributes(v) for v in value]
    return value


def as_dataclasses(value: Any, name: str = "Body") -> Any:
    """The payload as nested dataclass instances."""
    if isinstance(value, dict):
        cls = dataclasses.make_dataclass(name, [(k, Any) for k in value])
        return cls(**{k: as_dataclasses(v, k.title().replace("_", "")) for k, v in value.items()})
    if isinstance(value, list):
        return [as_dataclasses(v, name) for v in value]
    return value


def expected_cost(case: ContextCase, at: datetime) -> Decimal | None:
    if case.published_usd is not None:
        return case.published_usd
    if case.price_context is None:
        return None
    t = token_fields(case.body)
    usage = Usage(
        input_tokens=t["input_tokens"],
        output_tokens=t["output_tokens"],
        cache_read_tokens=t["cache_read_tokens"],
        cache_write_tokens=t["cache_write_tokens"],
        cache_write_1h_tokens=t["cache_write_1h_tokens"],
        web_searches=case.web_searches,
    )
    return calc_price(
        usage,
        case.model,
        provider_id=case.provider,
        genai_request_timestamp=at,
        price_context=case.price_context or None,
    ).total_price


# Keywords a wrapper may pass as None: they never erase what the response says.
NONE_KEYWORDS = ("processing", "service_tier", "speed", "route", "web_search_requests")


async def test_the_whole_call_costs_what_genai_prices_or_the_provider_says_in_every_shape(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    pubsub_names: PubSubNames,
    tmp_path: Path,
) -> None:
    # Given each recorded response, in three object shapes, through record_usage
    org = await provisioned_org(db, plan="business")
    settings = ProducerSettings(
        project_id=pubsub_names.project_id, topic=pubsub_names.topic, spool_dir=tmp_path
    )
    at = datetime.now(UTC) - timedelta(minutes=1)
    recorded: dict[uuid.UUID, tuple[ContextCase, str]] = {}
    with UsageProducer(settings, strict=True) as producer:
        for case in CASES:
            for shape, body in (
                ("dict", case.body),
                ("attributes", as_attributes(case.body)),
                ("dataclasses", as_dataclasses(case.body)),
                ("dict, None keywords", case.body),
            ):
                keywords = dict(case.keywords or {})
                if shape == "dict, None keywords":  # a wrapper forwarding its own defaults
                    keywords = {k: None for k in NONE_KEYWORDS} | keywords
                event_id = producer.record_usage(
                    organization_id=org,
                    provider=case.provider,
                    model=case.model,
                    usage=body,
                    occurred_at=at,
                    **keywords,
                )
                recorded[event_id] = (case, shape)
        assert producer.flush(timeout=30)

    # When the worker writes them
    worker = Worker(consumer_settings(), db)
    await asyncio.wait_for(worker.run(), timeout=120)
    worker.source.close()

    # Then each stored cost is the price of the whole call, the same in every shape
    async with db.engine.connect() as conn:
        rows = {
            r.event_id: r
            for r in await conn.execute(
                text(
                    "SELECT event_id, cost_usd, unpriced_reason, price_variant,"
                    " web_search_requests FROM usage_events WHERE organization_id = :o"
                ),
                {"o": org},
            )
        }
    assert len(rows) == len(recorded)
    wrong = []
    for event_id, (case, shape) in recorded.items():
        row, expected = rows[event_id], expected_cost(case, at)
        assert row.web_search_requests == case.web_searches, case.name
        if expected is None:
            if (row.cost_usd, row.unpriced_reason) != (None, case.unpriced_reason):
                wrong.append(f"{case.name} [{shape}]: {row.cost_usd} {row.unpriced_reason}")
        elif row.cost_usd is None or abs(row.cost_usd - expected) > RELATIVE * expected:
            wrong.append(f"{case.name} [{shape}]: stored {row.cost_usd}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    await assert_counter_derivable(db, org)
