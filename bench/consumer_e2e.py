"""Consumer end to end through the Pub/Sub emulator: published messages -> committed and acked.

Each round publishes the same number of fresh events to two subscriptions, then drains one with
a raw correct consumer (``RawConsumer``: unary pull, batches filled like the worker's, one raw
asyncpg unnest insert + summed counter UPDATE per batch, commit, then ack) and the other with
the worker, alternating which goes first. A warm-up round runs both before anything is timed:
the emulator is a JVM whose pull path runs 2-4x slower until it is compiled.
On the emulator the emulator's own CPU sets the pace, so two figures are printed: wall msg/s
(bar >= 0.8x the raw consumer's) and CPU per message of this process plus PostgreSQL and the
rest of the machine, the emulator excluded (bar <= 1.25x): what decides a replica's throughput
on real Pub/Sub.
Run: uv run python -m bench.consumer_e2e [--messages 100000] [--orgs 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import asyncpg
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import BatchSettings
from google.pubsub_v1.types import AcknowledgeRequest, PullResponse
from sqlalchemy.engine import make_url

from bench._common import CpuMeter, Timer, bench_database, events, manager, provision_orgs
from bench.consumer_write import RAW_COUNTERS, RAW_INSERT
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker, tune_gc
from biz2bricks_core import encode_event
from biz2bricks_devtools.localservices import start_pubsub_emulator
from tests.support import libpq_url

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


class RawConsumer:
    """The bar's baseline: the simplest correct consumer, written without the project's code.

    Unary pull (4 pulls in flight, 1,000 per call), batches filled like the worker's (up to
    1,000 messages, lingering up to 50 ms), ``json.loads`` per message, one raw asyncpg
    ``unnest`` insert plus one summed counter UPDATE per batch, commit, then ack the batch.
    No validation, rejects, pricing, periods, leases, retries or metrics.
    """

    def __init__(self, url: str, subscription: str, batch_max: int = 1000) -> None:
        self._url = url
        self._subscription = subscription
        self._batch_max = batch_max
        self._client = SubscriberClient()
        self._queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.acked = 0

    def _pull(self) -> list[Any]:
        try:
            response = self._client.pull(
                subscription=self._subscription, max_messages=1000, timeout=2, retry=None
            )
        except gexc.DeadlineExceeded:
            return []
        return list(PullResponse.pb(response).received_messages)

    async def _puller(self, total: int) -> None:
        while self.acked < total:
            received = await asyncio.to_thread(self._pull)
            if received:
                self._queue.put_nowait(received)

    async def _batch(self) -> list[Any]:
        messages = list(await self._queue.get())
        linger_until = time.monotonic() + 0.05
        while len(messages) < self._batch_max:
            remaining = linger_until - time.monotonic()
            if remaining <= 0:
                break
            try:
                messages.extend(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return messages

    async def run(self, total: int) -> None:
        """Consume until ``total`` messages are committed and acked."""
        conn = await asyncpg.connect(libpq_url(make_url(self._url)))
        pullers = [asyncio.create_task(self._puller(total)) for _ in range(4)]
        try:
            while self.acked < total:
                messages = await self._batch()
                bodies = [json.loads(m.message.data) for m in messages]
                async with conn.transaction():
                    rows = await conn.fetch(
                        RAW_INSERT,
                        [b["event_id"] for b in bodies],
                        [b["organization_id"] for b in bodies],
                        [datetime.fromisoformat(b["occurred_at"]) for b in bodies],
                        [b["provider"] for b in bodies],
                        [b["model"] for b in bodies],
                        [b["input_tokens"] for b in bodies],
                        [b["output_tokens"] for b in bodies],
                        [b.get("cache_read_tokens", 0) for b in bodies],
                        [b.get("cache_write_tokens", 0) for b in bodies],
                    )
                    sums: dict[uuid.UUID, int] = defaultdict(int)
                    for row in rows:
                        sums[row["organization_id"]] += row["tokens"]
                    orgs = sorted(sums)
                    await conn.execute(RAW_COUNTERS, orgs, [sums[o] for o in orgs])
                request = AcknowledgeRequest.pb()(
                    subscription=self._subscription, ack_ids=[m.ack_id for m in messages]
                )
                await asyncio.to_thread(
                    self._client.acknowledge, request=AcknowledgeRequest.wrap(request), timeout=30
                )
                self.acked += len(messages)
        finally:
            for puller in pullers:
                puller.cancel()
            await asyncio.gather(*pullers, return_exceptions=True)
            await conn.close()
            self._client.close()


def raw_consumer(url: str, subscription: str, total: int) -> float:
    """Seconds the raw correct consumer takes to commit and ack ``total`` messages."""
    with Timer() as t:
        asyncio.run(RawConsumer(url, subscription).run(total))
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
                raw_s = raw_consumer(url, raw_sub, total)
        else:
            with our_cpu:
                our_s = asyncio.run(ours(url, our_sub, total))
    return total / raw_s, total / our_s, raw_cpu, our_cpu


def cpu_ratio(ours: CpuMeter, raw: CpuMeter) -> float:
    """Our CPU per message (this process + PostgreSQL and the rest, emulator excluded) over
    the raw consumer's; both drained the same number of messages."""
    ours_cpu = ours.machine - ours.emulator
    raw_cpu = raw.machine - raw.emulator
    return ours_cpu / raw_cpu if raw_cpu > 0 else float("nan")


def main(total: int, n_orgs: int, rounds: int, warmup: int) -> None:
    tune_gc()  # as the biz2bricks-consumer command does before it starts the worker
    emulator = start_pubsub_emulator(PROJECT)
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    walls: list[float] = []
    cpus: list[float] = []
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
                walls.append(our_rate / raw_rate)
                cpus.append(cpu_ratio(our_cpu, raw_cpu))
                print(
                    f"round {r + 1}/{rounds} ({'raw' if raw_first else 'ours'} first, "
                    f"{total:,} messages): raw correct consumer {raw_rate:,.0f} msg/s, "
                    f"worker {our_rate:,.0f} msg/s, wall ratio {walls[-1]:.2f}, "
                    f"CPU/message ratio {cpus[-1]:.2f}\n"
                    f"  raw  {raw_cpu.per_message(total)}\n"
                    f"  ours {our_cpu.per_message(total)}",
                    flush=True,
                )
    finally:
        emulator.stop()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"CPU per message (worker + PostgreSQL, emulator excluded) vs the raw correct consumer: "
        f"median {cpu:.2f}x (rounds: {', '.join(f'{c:.2f}' for c in cpus)}; bar <= 1.25) "
        f"{'MET' if cpu <= 1.25 else 'NOT MET'}"
    )
    print(
        f"wall msg/s vs the raw correct consumer: median {wall:.2f}x "
        f"(rounds: {', '.join(f'{w:.2f}' for w in walls)}; bar >= 0.8) "
        f"{'MET' if wall >= 0.8 else 'NOT MET'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50_000, help="0: no warm-up round")
    args = parser.parse_args()
    main(args.messages, args.orgs, args.rounds, args.warmup)
