"""UsageProducer against the real emulator: delivery, ids, rejects, outages, restarts, memory."""

from __future__ import annotations

import json
import resource
import time
import uuid
from pathlib import Path

import pytest
from google.cloud.pubsub_v1 import SubscriberClient

from biz2bricks_core import decode_event
from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.threaded_proxy import ThreadedProxy


def pull_all(subscription: str, expected: int, timeout_s: float = 60) -> list[tuple[bytes, dict]]:
    """Pull and ack until ``expected`` messages arrived (or fail after ``timeout_s``)."""
    got: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + timeout_s
    with SubscriberClient() as client:
        while len(got) < expected and time.monotonic() < deadline:
            response = client.pull(subscription=subscription, max_messages=1000, timeout=10)
            if response.received_messages:
                got.extend(
                    (m.message.data, dict(m.message.attributes)) for m in response.received_messages
                )
                client.acknowledge(
                    subscription=subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
    return got


def record(producer: UsageProducer, org: uuid.UUID, n: int, **kw: object) -> list[uuid.UUID]:
    return [
        producer.record_tokens(
            organization_id=org,
            provider="openai",
            model="gpt-4o",
            input_tokens=100 + i,
            output_tokens=i,
            **kw,
        )  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_events_arrive_with_their_body_and_attributes(
    producer_settings: ProducerSettings, pubsub_names: PubSubNames
) -> None:
    org, user = uuid.uuid4(), uuid.uuid4()
    with UsageProducer(producer_settings) as producer:
        event_id = producer.record_tokens(
            organization_id=org,
            user_id=user,
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=1200,
            cache_read_tokens=1000,
            output_tokens=300,
            operation="summarize",
            request_id="req-1",
            metadata={"doc": "x.pdf"},
        )
        assert producer.flush(timeout=20)
    [(data, attributes)] = pull_all(pubsub_names.subscription_path, 1)
    assert attributes == {
        "event_type": "llm.tokens",
        "schema_version": "1",
        "organization_id": str(org),
    }
    event = decode_event(data, attributes)
    assert (event.event_id, event.organization_id, event.user_id) == (event_id, org, user)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1200, 1000, 300)
    assert (event.operation, event.request_id, event.metadata) == (
        "summarize",
        "req-1",
        {"doc": "x.pdf"},
    )
    assert (producer.stats()["accepted"], producer.stats()["published"]) == (1, 1)


def test_a_retried_event_id_arrives_under_that_same_id(
    producer_settings: ProducerSettings, pubsub_names: PubSubNames
) -> None:
    chosen = uuid.uuid4()
    with UsageProducer(producer_settings) as producer:
        first = producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
            event_id=chosen,
        )
        second = producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
            event_id=str(chosen),
        )
        assert producer.flush(timeout=20)
    assert first == second == chosen
    messages = pull_all(pubsub_names.subscription_path, 2)
    assert {json.loads(data)["event_id"] for data, _ in messages} == {str(chosen)}


def test_invalid_arguments_are_counted_and_never_raise(producer_settings: ProducerSettings) -> None:
    with UsageProducer(producer_settings) as producer:
        producer.record_tokens(
            organization_id="nope",
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
        )
        producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=-1,
            output_tokens=1,
        )
        producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
            cache_read_tokens=5,
        )
        stats = producer.stats()
    assert (stats["rejected"], stats["accepted"]) == (3, 0)


def test_strict_mode_raises_value_error(producer_settings: ProducerSettings) -> None:
    strict = producer_settings.model_copy(update={"strict": True})
    with UsageProducer(strict) as producer, pytest.raises(ValueError, match="input_tokens"):
        producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=-1,
            output_tokens=1,
        )


@pytest.mark.fault
def test_an_outage_spools_without_blocking_and_replays_everything(
    outage: ThreadedProxy, pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    # Given Pub/Sub unreachable
    settings = producer_settings.model_copy(
        update={"publish_timeout_s": 1.0, "max_in_flight_messages": 500}
    )
    producer = UsageProducer(settings)
    org = uuid.uuid4()
    # When events are recorded, no call blocks and nothing raises
    slowest = 0.0
    ids = []
    for i in range(2000):
        start = time.perf_counter()
        ids.append(
            producer.record_tokens(
                organization_id=org,
                provider="openai",
                model="gpt-4o",
                input_tokens=i,
                output_tokens=1,
            )
        )
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.5
    deadline = time.monotonic() + 30
    while producer.stats()["spooled"] < 2000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert producer.stats()["spooled"] == 2000
    assert not producer.flush(timeout=0.5)
    # Then, once Pub/Sub is back, every event arrives exactly as recorded
    outage.open()
    try:
        assert producer.flush(timeout=60)
        messages = pull_all(pubsub_names.subscription_path, 2000)
    finally:
        producer.close()
    assert sorted(json.loads(d)["event_id"] for d, _ in messages) == sorted(map(str, ids))
    assert sorted(json.loads(d)["input_tokens"] for d, _ in messages) == list(range(2000))
    assert producer.stats()["replayed"] == 2000
    assert producer.stats()["dropped"] == 0


@pytest.mark.fault
def test_what_was_spooled_is_replayed_by_the_next_producer_after_a_restart(
    outage: ThreadedProxy, pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    settings = producer_settings.model_copy(update={"publish_timeout_s": 1.0})
    first = UsageProducer(settings)
    ids = record(first, uuid.uuid4(), 300)
    first.close(timeout=3)
    assert first.stats()["spool_bytes"] > 0
    outage.open()
    with UsageProducer(settings) as second:
        assert second.flush(timeout=60)
        assert second.stats()["replayed"] == 300
    messages = pull_all(pubsub_names.subscription_path, 300)
    assert sorted(json.loads(d)["event_id"] for d, _ in messages) == sorted(map(str, ids))


@pytest.mark.fault
def test_memory_stays_bounded_while_200k_events_are_recorded_during_an_outage(
    outage: ThreadedProxy, tmp_path: Path
) -> None:
    settings = ProducerSettings(
        project_id="memory",
        spool_dir=tmp_path,
        publish_timeout_s=1.0,
        replay_interval_s=60,
        max_in_flight_messages=2000,
    )
    producer = UsageProducer(settings)
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    org = uuid.uuid4()
    max_in_flight = 0
    for i in range(200_000):
        producer.record_tokens(
            organization_id=org, provider="openai", model="gpt-4o", input_tokens=i, output_tokens=1
        )
        if i % 1000 == 0:
            max_in_flight = max(max_in_flight, producer.stats()["in_flight"])
    deadline = time.monotonic() + 60
    while producer.stats()["spooled"] < 200_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    stats = producer.stats()
    producer.close(timeout=1)
    assert max_in_flight <= 2000
    assert stats["spooled"] == 200_000, stats
    assert stats["dropped"] == 0, stats
    assert growth_mib < 150, f"resident set grew {growth_mib:.0f} MiB"


def test_events_recorded_just_before_exit_are_flushed_at_interpreter_exit(
    pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    script = (
        "import uuid; from biz2bricks_producer import UsageProducer; "
        f"p = UsageProducer(project_id={pubsub_names.project_id!r}, "
        f"topic={pubsub_names.topic!r}, spool_dir={str(tmp_path)!r}); "
        "[p.record_tokens(organization_id=uuid.uuid4(), provider='openai', model='gpt-4o', "
        "input_tokens=1, output_tokens=1) for _ in range(50)]"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ.copy(), timeout=60)
    assert len(pull_all(pubsub_names.subscription_path, 50)) == 50


def test_importing_the_producer_does_not_import_the_database_layer() -> None:
    import subprocess
    import sys

    # genai-prices takes over a second to import: the usage adapters must not need it.
    code = (
        "import sys, biz2bricks_producer; "
        "heavy = ('sqlalchemy', 'asyncpg', 'genai_prices'); "
        "bad = [m for m in heavy if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_counters_are_exported_to_prometheus(producer_settings: ProducerSettings) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    with UsageProducer(producer_settings) as producer:
        producer.metrics.register_prometheus(registry)
        producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=-1,
            output_tokens=1,
        )
        text = generate_latest(registry).decode()
    assert "usage_producer_rejected_total 1.0" in text
    assert "usage_producer_accepted_total 0.0" in text


def test_reservation_id_travels_with_the_event(
    producer_settings: ProducerSettings, pubsub_names: PubSubNames
) -> None:
    org, hold = uuid.uuid4(), uuid.uuid4()
    with UsageProducer(producer_settings) as producer:
        producer.record_tokens(
            organization_id=org,
            provider="openai",
            model="gpt-4o",
            input_tokens=10,
            output_tokens=5,
            reservation_id=hold,
        )
        assert producer.flush(timeout=10)
    [(data, attributes)] = pull_all(pubsub_names.subscription_path, 1)
    assert json.loads(data)["reservation_id"] == str(hold)
    assert decode_event(data, attributes).reservation_id == hold


def test_the_producer_makes_time_ordered_ids_and_keeps_the_callers_of_any_version(
    producer_settings: ProducerSettings, pubsub_names: PubSubNames
) -> None:
    def record(event_id: uuid.UUID | None = None) -> uuid.UUID:
        return producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
            event_id=event_id,
        )

    chosen_v4 = uuid.uuid4()
    with UsageProducer(producer_settings) as producer:
        made = [record() for _ in range(3)]
        kept = record(chosen_v4)
        assert producer.flush(timeout=20)
    assert [m.version for m in made] == [7, 7, 7]
    assert made == sorted(made)
    assert kept == chosen_v4
    messages = pull_all(pubsub_names.subscription_path, 4)
    received = {json.loads(data)["event_id"] for data, _ in messages}
    assert received == {str(u) for u in [*made, chosen_v4]}
