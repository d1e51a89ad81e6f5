"""Consumer end to end through the Pub/Sub emulator: published messages -> committed and acked.

Compared in one run against a raw unary pull (1,000 per call) + ack loop over the same number
of identical messages on a second subscription. Bar: ours >= 0.5x the raw rate.
Run: uv run python -m bench.consumer_e2e [--messages 100000] [--orgs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import BatchSettings

from bench._common import Timer, bench_database, events, manager, provision_orgs
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import encode_event
from biz2bricks_core.localservices import start_pubsub_emulator

PROJECT = "biz2bricks-bench"


def setup_topic(name: str) -> tuple[str, str]:
    publisher, subscriber = PublisherClient(), SubscriberClient()
    topic = f"projects/{PROJECT}/topics/{name}"
    subscription = f"projects/{PROJECT}/subscriptions/{name}-sub"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    subscriber.close()
    return topic, subscription


def publish_all(topic: str, payloads: list[tuple[bytes, dict[str, str]]]) -> None:
    client = PublisherClient(batch_settings=BatchSettings(max_messages=1000, max_latency=0.05))
    futures = [client.publish(topic, data, **attrs) for data, attrs in payloads]
    for future in futures:
        future.result(timeout=120)
    client.stop()


def raw_pull_ack(subscription: str, total: int) -> float:
    client = SubscriberClient()
    done = 0
    with Timer() as t:
        while done < total:
            response = client.pull(subscription=subscription, max_messages=1000, timeout=30)
            ack_ids = [m.ack_id for m in response.received_messages]
            if ack_ids:
                client.acknowledge(subscription=subscription, ack_ids=ack_ids)
                done += len(ack_ids)
    client.close()
    return t.seconds


async def ours(url: str, subscription: str, total: int) -> float:
    settings = ConsumerSettings(
        project_id=PROJECT, subscription=subscription.rsplit("/", 1)[1], health_port=0
    )
    db = manager(url)
    worker = Worker(settings, db)
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.metrics.value("usage_consumer_messages_acked_total") < total:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.stop()
    await task
    worker.source.close()
    inserted = worker.metrics.value("usage_consumer_events_inserted_total")
    assert inserted == total, f"inserted {inserted} of {total}"
    await db.dispose()
    return elapsed


def main(total: int, n_orgs: int) -> None:
    emulator = start_pubsub_emulator(PROJECT)
    import os

    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    try:
        with bench_database() as (url, _server):
            orgs = asyncio.run(provision_orgs(url, n_orgs))
            payloads = [encode_event(e) for e in events(orgs, total)]
            suffix = uuid.uuid4().hex[:6]
            raw_topic, raw_sub = setup_topic(f"raw-{suffix}")
            our_topic, our_sub = setup_topic(f"ours-{suffix}")
            with Timer() as t_pub:
                publish_all(raw_topic, payloads)
                publish_all(our_topic, payloads)
            print(f"published 2 x {total:,} messages in {t_pub.seconds:.1f}s")
            raw_s = raw_pull_ack(raw_sub, total)
            our_s = asyncio.run(ours(url, our_sub, total))
    finally:
        emulator.stop()
    raw_rate, our_rate = total / raw_s, total / our_s
    print(f"raw unary pull + ack: {raw_rate:,.0f} msg/s")
    print(f"consumer (pull, decode, write, commit, ack): {our_rate:,.0f} msg/s")
    print(f"ratio {our_rate / raw_rate:.2f}x (bar >= 0.5)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=1000)
    args = parser.parse_args()
    main(args.messages, args.orgs)
