"""Usage alerts end to end: written once per threshold, relayed to the alerts topic, at exit too."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from sqlalchemy import text

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import DatabaseManager
from biz2bricks_core.alerts import ALERT_BODY_KEYS
from biz2bricks_devtools.localservices import find_free_port
from tests.conftest import PROJECT_ID, PubSubNames
from tests.consumer.conftest import stopped_summary
from tests.consumer.test_worker import ready, wait_until
from tests.factories import assert_counter_derivable, make_event, provisioned_org
from tests.support import unique_name


class AlertsTopic:
    """A per-test alerts topic with a subscription that sees everything published to it."""

    def __init__(self) -> None:
        self.topic = unique_name("alerts")
        self.topic_path = f"projects/{PROJECT_ID}/topics/{self.topic}"
        self.subscription_path = f"projects/{PROJECT_ID}/subscriptions/{self.topic}-sub"
        self.publisher = PublisherClient()
        self.subscriber = SubscriberClient()
        self.publisher.create_topic(name=self.topic_path)
        self.subscriber.create_subscription(
            name=self.subscription_path, topic=self.topic_path, ack_deadline_seconds=60
        )

    def pull_all(self, organization_id: uuid.UUID, quiet_pulls: int = 3) -> list[Any]:
        """The organization's messages, pulled until a few pulls in a row come back empty.

        The relay publishes every unpublished alert of the database, and the tests share one:
        alerts other tests wrote arrive here too.
        """
        messages: list[Any] = []
        empty = 0
        while empty < quiet_pulls:
            response = self.subscriber.pull(
                subscription=self.subscription_path, max_messages=100, timeout=5
            )
            if not response.received_messages:
                empty += 1
                continue
            empty = 0
            messages.extend(
                m.message
                for m in response.received_messages
                if json.loads(m.message.data)["organization_id"] == str(organization_id)
            )
            self.subscriber.acknowledge(
                subscription=self.subscription_path,
                ack_ids=[m.ack_id for m in response.received_messages],
            )
        return messages

    def close(self) -> None:
        self.subscriber.delete_subscription(subscription=self.subscription_path)
        self.publisher.delete_topic(topic=self.topic_path)
        self.subscriber.close()
        self.publisher.transport.close()


@pytest.fixture
def alerts_topic(pubsub_names: PubSubNames) -> Iterator[AlertsTopic]:
    topic = AlertsTopic()
    yield topic
    topic.close()


async def alert_rows(db: DatabaseManager, org: uuid.UUID) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM usage_alerts WHERE organization_id = :o ORDER BY threshold_pct"),
            {"o": org},
        )
        return [dict(r._mapping) for r in rows]


async def test_two_consumer_processes_write_and_relay_each_alert_once(
    db: DatabaseManager,
    publish: Callable[..., None],
    worker_process: Callable[..., Any],
    alerts_topic: AlertsTopic,
) -> None:
    # Given two consumer processes with small batches on one subscription
    org = await provisioned_org(db, plan="free")
    small = {
        "CONSUMER_PULL_CONCURRENCY": "1",
        "CONSUMER_PULL_MAX_MESSAGES": "20",
        "CONSUMER_BATCH_MAX_MESSAGES": "20",
        "USAGE_ALERTS_TOPIC": alerts_topic.topic,
    }
    ports = [find_free_port(), find_free_port()]
    workers = [
        worker_process("--exit-when-idle", "3", "--health-port", str(port), **small)
        for port in ports
    ]
    for port in ports:
        await wait_until(lambda port=port: ready(port), timeout_s=60)
    # When usage crosses 50, 80 and 100 percent, every event published twice
    events = [make_event(org, input_tokens=1_000, output_tokens=0) for _ in range(120)]
    await asyncio.to_thread(publish, events + events[::-1])
    outputs = [await asyncio.to_thread(w.communicate, timeout=120) for w in workers]
    for proc, (_, stderr) in zip(workers, outputs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
    # Then exactly one row per threshold, each published
    rows = await alert_rows(db, org)
    assert [r["threshold_pct"] for r in rows] == [50, 80, 100]
    assert all(r["published_at"] is not None for r in rows)
    assert sum(stopped_summary(err)["alerts_created"] for _, err in outputs) == 3
    # And the topic carries them: at least 3 messages, 3 distinct alert ids, bodies whole
    messages = await asyncio.to_thread(alerts_topic.pull_all, org)
    assert len(messages) >= 3
    assert {m.attributes["alert_id"] for m in messages} == {str(r["id"]) for r in rows}
    by_id = {str(r["id"]): r for r in rows}
    for message in messages:
        body = json.loads(message.data)
        assert tuple(body) == ALERT_BODY_KEYS
        assert body["id"] == message.attributes["alert_id"]
        row = by_id[body["id"]]
        assert body["organization_id"] == str(org)
        assert (body["metric"], body["threshold_pct"], body["allowance"]) == (
            "tokens",
            row["threshold_pct"],
            100_000,
        )
        assert body["used"] == row["used"] >= row["threshold_pct"] * 1_000
        assert body["period_start"] == row["period_start"].isoformat()
        assert body["created_at"] == row["created_at"].isoformat()
    assert await assert_counter_derivable(db, org) == 120_000


async def insert_pending_alert(db: DatabaseManager, org: uuid.UUID) -> uuid.UUID:
    """An alert committed but never published (its replica died before relaying it)."""
    async with db.session() as session:
        alert_id: uuid.UUID = (
            await session.execute(
                text(
                    "INSERT INTO usage_alerts (organization_id, period_start, metric,"
                    " threshold_pct, used, allowance) SELECT organization_id, period_start,"
                    " 'tokens', 80, 85000, 100000 FROM usage_limits WHERE organization_id = :o"
                    " RETURNING id"
                ),
                {"o": org},
            )
        ).scalar_one()
    return alert_id


@pytest.mark.parametrize("exit_by", ["idle", "stop"])
async def test_pending_alerts_are_relayed_before_the_worker_exits(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    alerts_topic: AlertsTopic,
    exit_by: str,
) -> None:
    # Given an unpublished alert and a worker that would not poll for an hour
    org = await provisioned_org(db, plan="free")
    alert_id = await insert_pending_alert(db, org)
    settings = consumer_settings(
        alerts_topic=alerts_topic.topic,
        alert_poll_s=3600,
        exit_when_idle_s=1.0 if exit_by == "idle" else None,
    )
    worker = Worker(settings, db)
    # When it exits (idle, or stop() as SIGTERM does)
    try:
        running = asyncio.create_task(worker.run())
        if exit_by == "stop":
            await asyncio.sleep(1.0)
            worker.stop()
        await asyncio.wait_for(running, timeout=60)
    finally:
        worker.source.close()
    # Then the alert was published and marked
    (row,) = await alert_rows(db, org)
    assert row["published_at"] is not None
    messages = await asyncio.to_thread(alerts_topic.pull_all, org)
    assert [m.attributes["alert_id"] for m in messages] == [str(alert_id)]
    assert worker.metrics.value("usage_consumer_alerts_published_total") >= 1  # others too


async def test_a_missing_alerts_topic_keeps_alerts_pending_and_is_counted(
    db: DatabaseManager, consumer_settings: Callable[..., ConsumerSettings]
) -> None:
    org = await provisioned_org(db, plan="free")
    await insert_pending_alert(db, org)
    settings = consumer_settings(alerts_topic=unique_name("absent"), exit_when_idle_s=1.0)
    worker = Worker(settings, db)
    try:
        await asyncio.wait_for(worker.run(), timeout=60)
    finally:
        worker.source.close()
    (row,) = await alert_rows(db, org)
    assert row["published_at"] is None
    assert worker.metrics.value("usage_consumer_alert_relay_failures_total") >= 1
