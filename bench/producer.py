"""Caller-side cost of record_tokens() against raw PublisherClient.publish() of the same message.

Both run in the same process on the same emulator, in alternating rounds, once with Pub/Sub up
and once with it unreachable (a port where nothing listens). Bar: p99 <= 1.5x raw p99 in both.
Run: uv run python -m bench.producer [--calls 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings

from bench._common import percentile
from biz2bricks_core import UsageEvent, encode_event
from biz2bricks_devtools.localservices import find_free_port, start_pubsub_emulator
from biz2bricks_producer import ProducerSettings, UsageProducer

PROJECT = "biz2bricks-bench"


def measure(label: str, calls: int, rounds: int, spool: Path) -> tuple[float, float]:
    topic_name = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{PROJECT}/topics/{topic_name}"
    raw = PublisherClient(batch_settings=BatchSettings(max_messages=500, max_latency=0.02))
    # Unreachable in the outage run: the publish() calls are what is measured.
    with contextlib.suppress(Exception):
        raw.create_topic(name=topic, timeout=5, retry=None)
    producer = UsageProducer(
        ProducerSettings(project_id=PROJECT, topic=topic_name, spool_dir=spool, publish_timeout_s=5)
    )
    org = uuid.uuid4()
    sample = UsageEvent(
        event_id=uuid.uuid4(),
        organization_id=org,
        occurred_at=time.time(),
        provider="openai",
        model="gpt-4o",
        input_tokens=1200,
        output_tokens=300,
    )
    data, attributes = encode_event(sample)
    raw_samples: list[float] = []
    our_samples: list[float] = []
    per_round = calls // rounds
    for _ in range(rounds):
        for _ in range(per_round):
            start = time.perf_counter()
            raw.publish(topic, data, **attributes)
            raw_samples.append(time.perf_counter() - start)
        for _ in range(per_round):
            start = time.perf_counter()
            producer.record_tokens(
                organization_id=org,
                provider="openai",
                model="gpt-4o",
                input_tokens=1200,
                output_tokens=300,
            )
            our_samples.append(time.perf_counter() - start)
        time.sleep(0.2)
    stats = producer.stats()
    producer.close(timeout=2)
    # The raw client retries a failed publish forever, so it is stopped only when up.
    if label == "pubsub up":
        raw.stop()
    raw_p = (percentile(raw_samples, 50) * 1e6, percentile(raw_samples, 99) * 1e6)
    our_p = (percentile(our_samples, 50) * 1e6, percentile(our_samples, 99) * 1e6)
    print(f"[{label}] raw publish()     p50 {raw_p[0]:6.1f} us  p99 {raw_p[1]:7.1f} us")
    print(
        f"[{label}] record_tokens()   p50 {our_p[0]:6.1f} us  p99 {our_p[1]:7.1f} us  "
        f"(published {stats['published']}, spooled {stats['spooled']}, "
        f"in flight {stats['in_flight']})"
    )
    return our_p[1] / raw_p[1], our_p[0] / raw_p[0]


def main(calls: int, rounds: int) -> None:
    emulator = start_pubsub_emulator(PROJECT)
    try:
        with tempfile.TemporaryDirectory() as spool:
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
            up, _ = measure("pubsub up", calls, rounds, Path(spool) / "up")
            os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{find_free_port()}"
            down, _ = measure("pubsub down", calls, rounds, Path(spool) / "down")
    finally:
        emulator.stop()
    print(
        f"ratio p99 record_tokens/publish: up {up:.2f}x, down {down:.2f}x (bar <= 1.5)", flush=True
    )
    # The raw client's commit threads retry the unreachable publishes forever and are not
    # daemons; leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    main(args.calls, args.rounds)
