"""An event the producer refuses is visible: the reason in the log message itself, a counter
per reason kind (in-process and in Prometheus), and the JSON event name kept stable."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from biz2bricks_core.logs import JsonFormatter
from biz2bricks_producer import ProducerSettings, UsageProducer


def _record_as_alice(producer: UsageProducer) -> uuid.UUID:
    return producer.record_tokens(
        organization_id=uuid.uuid4(),
        provider="openai",
        model="gpt-4o",
        input_tokens=1,
        output_tokens=1,
        user_id="alice",  # not a UUID
    )


def test_the_reason_is_in_the_message_under_plain_logging(
    producer_settings: ProducerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a producer and plain logging (no configure_logging)
    with UsageProducer(producer_settings) as producer, caplog.at_level(logging.WARNING):
        # When an event with a user_id that is not a UUID is recorded
        event_id = _record_as_alice(producer)
    # Then the log line's own text names the event, the field, and the strict switch
    [record] = [r for r in caplog.records if "event_rejected" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("producer.event_rejected: user_id:")
    assert str(event_id) in message
    assert "USAGE_PRODUCER_STRICT" in message


def test_rejects_are_counted_per_reason_kind(producer_settings: ProducerSettings) -> None:
    registry = CollectorRegistry()
    with UsageProducer(producer_settings) as producer:
        producer.metrics.register_prometheus(registry)
        _record_as_alice(producer)
        _record_as_alice(producer)
        producer.record_tokens(
            organization_id=uuid.uuid4(),
            provider="openai",
            model="gpt-4o",
            input_tokens=-1,
            output_tokens=1,
        )
        rejects = producer.metrics.rejects()
        total = producer.stats()["rejected"]
    exported = generate_latest(registry).decode()
    assert rejects == {"user_id": 2, "input_tokens": 1}
    assert total == 3
    assert 'usage_producer_rejected_by_reason_total{reason="user_id"} 2.0' in exported


def test_json_logs_keep_the_event_name_and_add_the_message(
    producer_settings: ProducerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with UsageProducer(producer_settings) as producer, caplog.at_level(logging.WARNING):
        _record_as_alice(producer)
    [record] = [r for r in caplog.records if "event_rejected" in r.getMessage()]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "producer.event_rejected"
    assert entry["reason"].startswith("user_id:")
    assert "user_id" in entry["message"]
    # a line without arguments carries its text too (Cloud Logging shows `message`)
    plain = logging.makeLogRecord({"msg": "consumer.started", "levelname": "INFO"})
    assert json.loads(JsonFormatter().format(plain))["message"] == "consumer.started"
