"""Consumer end to end through the Pub/Sub emulator: published messages -> committed and acked.

Each round publishes the same number of fresh events to two subscriptions, then drains one with
a raw unary pull (1,000 per call) + ack loop and the other with the worker (pull, decode, write,
commit, ack), alternating which goes first. A warm-up round runs both before anything is timed:
the emulator is a JVM whose pull path runs 2-4x slower until it is compiled, and an unwarmed
first measurement penalises whichever side runs first. Bar: ours >= 0.5x the raw rate.
Run: uv run python -m bench.consumer_e2e [--messages 100000] [--orgs 1000] [--rounds 3] [--held]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import BatchSettings

from bench._common import CpuMeter, Timer, bench_database, events, manager, provision_orgs
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker, tune_gc
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


def raw_pull_held_ack(subscription: str, total: int, held: int = 1000) -> float:
    """Raw pull + ack, but each message acked only once ``held`` more have been pulled.

    Not the bar's baseline: it shows what acking after a batch commits (as any consumer that
    writes before it acks must) costs the emulator by itself, with no decoding and no database.
    """
    client = SubscriberClient()
    done, pending = 0, []
    with Timer() as t:
        while done < total:
            response = client.pull(subscription=subscription, max_messages=1000, timeout=30)
            pending.extend(m.ack_id for m in response.received_messages)
            if len(pending) > held or done + len(pending) >= total:
                client.acknowledge(subscription=subscription, ack_ids=pending[:1000])
                done += len(pending[:1000])
                del pending[:1000]
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
    while worker.metrics.value("usage_consumer_messages_acked_total") < total:
        if task.done():
            task.result()  # the worker stopped early: show why
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.stop()
    await task
    worker.source.close()
    inserted = worker.metrics.value("usage_consumer_events_inserted_total")
    assert inserted == total, f"inserted {inserted} of {total}"
    await db.dispose()
    return elapsed


def one_round(
    url: str, orgs: list[uuid.UUID], total: int, raw_first: bool
) -> tuple[float, float, CpuMeter, CpuMeter]:
    """Publish ``total`` fresh events to two subscriptions, drain both; rates and CPU used."""
    suffix = uuid.uuid4().hex[:6]
    raw_topic, raw_sub = setup_topic(f"raw-{suffix}")
    our_topic, our_sub = setup_topic(f"ours-{suffix}")
    publish_all(raw_topic, [encode_event(e) for e in events(orgs, total)])
    publish_all(our_topic, [encode_event(e) for e in events(orgs, total)])
    raw_cpu, our_cpu = CpuMeter(), CpuMeter()
    for side in ("raw", "ours") if raw_first else ("ours", "raw"):
        if side == "raw":
            with raw_cpu:
                raw_s = raw_pull_ack(raw_sub, total)
        else:
            with our_cpu:
                our_s = asyncio.run(ours(url, our_sub, total))
    return total / raw_s, total / our_s, raw_cpu, our_cpu


def held_round(orgs: list[uuid.UUID], total: int) -> tuple[float, CpuMeter]:
    """The held-ack variant of the raw loop on its own subscription: rate and CPU used."""
    topic, subscription = setup_topic(f"held-{uuid.uuid4().hex[:6]}")
    publish_all(topic, [encode_event(e) for e in events(orgs, total)])
    with CpuMeter() as cpu:
        seconds = raw_pull_held_ack(subscription, total)
    return total / seconds, cpu


def main(total: int, n_orgs: int, rounds: int, warmup: int, held: bool) -> None:
    tune_gc()  # as the biz2bricks-consumer command does before it starts the worker
    emulator = start_pubsub_emulator(PROJECT)
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    ratios: list[float] = []
    try:
        with bench_database() as (url, _server):
            orgs = asyncio.run(provision_orgs(url, n_orgs))
            if warmup:
                raw_rate, our_rate, _, _ = one_round(url, orgs, warmup, raw_first=True)
                print(
                    f"warm-up ({warmup:,} messages, not counted): raw {raw_rate:,.0f} msg/s, "
                    f"ours {our_rate:,.0f} msg/s",
                    flush=True,
                )
            for r in range(rounds):
                raw_first = r % 2 == 0
                raw_rate, our_rate, raw_cpu, our_cpu = one_round(url, orgs, total, raw_first)
                ratios.append(our_rate / raw_rate)
                print(
                    f"round {r + 1}/{rounds} ({'raw' if raw_first else 'ours'} first, "
                    f"{total:,} messages): raw unary pull + ack {raw_rate:,.0f} msg/s, "
                    f"consumer (pull, decode, write, commit, ack) {our_rate:,.0f} msg/s, "
                    f"ratio {our_rate / raw_rate:.2f}\n"
                    f"  raw  {raw_cpu.per_message(total)}\n"
                    f"  ours {our_cpu.per_message(total)}",
                    flush=True,
                )
                if held:
                    held_rate, held_cpu = held_round(orgs, total)
                    print(
                        f"  raw pull + ack held back by 1,000 messages (not the bar): "
                        f"{held_rate:,.0f} msg/s, ours {our_rate / held_rate:.2f}x of it\n"
                        f"  held {held_cpu.per_message(total)}",
                        flush=True,
                    )
    finally:
        emulator.stop()
    print(
        f"ratio median {statistics.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; bar >= 0.5)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50_000, help="0: no warm-up round")
    parser.add_argument(
        "--held", action="store_true", help="also time raw pull + ack with acks held back"
    )
    args = parser.parse_args()
    main(args.messages, args.orgs, args.rounds, args.warmup, args.held)
