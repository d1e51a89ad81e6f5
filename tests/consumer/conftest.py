"""Fixtures for worker tests: settings on the per-test subscription, publishing, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_core import UsageEvent, encode_event
from tests.conftest import PubSubNames


@pytest.fixture
def consumer_settings(pubsub_names: PubSubNames) -> Callable[..., ConsumerSettings]:
    """Settings aimed at this test's subscription, with fast retries; overrides by keyword."""

    def make(**overrides: Any) -> ConsumerSettings:
        values: dict[str, Any] = {
            "project_id": pubsub_names.project_id,
            "topic": pubsub_names.topic,
            "subscription": pubsub_names.subscription,
            "ack_deadline_s": 10,
            "retry_initial_s": 0.05,
            "retry_max_backoff_s": 1.0,
            "health_port": 0,
            "exit_when_idle_s": 2.0,
            "shutdown_grace_s": 10.0,
        }
        values.update(overrides)
        return ConsumerSettings(**values)

    return make


@pytest.fixture
def publish(pubsub_names: PubSubNames) -> Iterator[Callable[..., None]]:
    """Publish events (or raw (data, attributes) pairs) to this test's topic and wait."""
    client = PublisherClient(batch_settings=BatchSettings(max_messages=1000, max_latency=0.01))

    def send(items: Iterable[UsageEvent | tuple[bytes, dict[str, str]]]) -> None:
        futures = []
        for item in items:
            data, attributes = item if isinstance(item, tuple) else encode_event(item)
            futures.append(client.publish(pubsub_names.topic_path, data, **attributes))
        for future in futures:
            future.result(timeout=60)

    yield send
    client.stop()
    client.transport.close()


@pytest.fixture
def worker_process(
    pubsub_names: PubSubNames, database_url: str
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``biz2bricks-consumer`` processes on this test's subscription; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, module: str = "biz2bricks_consumer", **env: str) -> subprocess.Popen[str]:
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PUBSUB_PROJECT_ID": pubsub_names.project_id,
            "USAGE_TOPIC": pubsub_names.topic,
            "USAGE_SUBSCRIPTION": pubsub_names.subscription,
            "CONSUMER_ACK_DEADLINE": "10",
            "CONSUMER_RETRY_MAX_BACKOFF": "1",
            "LOG_LEVEL": "INFO",
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--health-port", "0", *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def stopped_summary(stderr: str) -> dict[str, Any]:
    """The counters a worker logged in its ``consumer.stopped`` line."""
    for line in stderr.splitlines():
        if '"consumer.stopped"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"no consumer.stopped line in:\n{stderr[-2000:]}")
