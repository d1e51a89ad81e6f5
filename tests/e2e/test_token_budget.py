"""Promise 8 end to end: holds keep a token budget through a burst while the consumer is down."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

from sqlalchemy import text

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.factories import assert_counter_derivable, counters, provisioned_org

ESTIMATE = 1_000  # prompt tokens + max output tokens of each call


async def live_holds(db: DatabaseManager, org: uuid.UUID) -> int:
    async with db.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM usage_token_holds"
                        " WHERE organization_id = :o AND state = 'live'"
                    ),
                    {"o": org},
                )
            ).scalar_one()
        )


async def test_a_burst_with_the_consumer_stopped_stays_within_the_allowance(
    db: DatabaseManager,
    pubsub_names: PubSubNames,
    tmp_path: Path,
) -> None:
    # Given a free organization (100k tokens) and no consumer running
    org = await provisioned_org(db, plan="free")
    service = UsageService(db)
    producer = UsageProducer(
        ProducerSettings(
            project_id=pubsub_names.project_id,
            topic=pubsub_names.topic,
            spool_dir=tmp_path / "spool",
        )
    )
    rng = random.Random(15)
    gate = asyncio.Semaphore(50)
    outcomes: list[bool] = []

    async def call() -> None:
        async with gate:
            hold = await service.reserve_tokens(org, ESTIMATE)
            outcomes.append(hold.allowed)
            if not hold.allowed:
                return
            await asyncio.sleep(0)  # the LLM call
            output = rng.randint(0, 400)
            producer.record_tokens(
                organization_id=org,
                provider="openai",
                model="gpt-4o",
                input_tokens=rng.randint(1, ESTIMATE - output),
                output_tokens=output,
                reservation_id=hold.reservation_id,
            )

    # When 1,500 calls run 50 at a time, each reserving before and recording after
    try:
        await asyncio.gather(*(call() for _ in range(1_500)))
        assert producer.flush(timeout=30)
    finally:
        producer.close()
    # Then only what the allowance holds was allowed, although no usage had landed yet
    assert sum(outcomes) == 100_000 // ESTIMATE
    assert (await counters(db, org))["tokens_used_period"] == 0
    # And once the consumer drains, usage is within the allowance and no hold is live
    settings = ConsumerSettings(
        project_id=pubsub_names.project_id,
        topic=pubsub_names.topic,
        subscription=pubsub_names.subscription,
        health_port=0,
        exit_when_idle_s=2.0,
    )
    worker = Worker(settings, db)
    try:
        await asyncio.wait_for(worker.run(), timeout=120)
    finally:
        worker.source.close()
    assert worker.metrics.value("usage_consumer_holds_settled_total") == 100
    row = await counters(db, org)
    assert 0 < row["tokens_used_period"] <= 100_000
    assert row["tokens_reserved"] == 0
    assert await live_holds(db, org) == 0
    decision = await service.check_token_limit(org)
    assert decision.reserved == 0
    assert decision.remaining == 100_000 - row["tokens_used_period"]
    await assert_counter_derivable(db, org)
