"""Fixtures for worker tests: settings on the per-test subscription, publishing, processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings

from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageEvent, encode_event
from tests.conftest import PubSubNames
from tests.tcp_proxy import TcpProxy


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


class RunningWorkers:
    """Workers started by a test: each is stopped and its channel closed at teardown."""

    def __init__(self) -> None:
        self._started: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(self, settings: ConsumerSettings, db: DatabaseManager, **kwargs: Any) -> Worker:
        """Build a worker and run it in the background."""
        worker = Worker(settings, db, **kwargs)
        self._started.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def until_idle(
        self, settings: ConsumerSettings, db: DatabaseManager, **kwargs: Any
    ) -> Worker:
        """Run a worker until it stops by itself (``exit_when_idle_s``); raise what it raised."""
        worker = self.start(settings, db, **kwargs)
        await asyncio.wait_for(asyncio.shield(self.task(worker)), timeout=90)
        return worker

    def task(self, worker: Worker) -> asyncio.Task[None]:
        """The task running ``worker``."""
        return next(t for w, t in self._started if w is worker)

    async def close(self) -> None:
        for worker, task in self._started:
            worker.stop()
            try:
                await asyncio.wait_for(task, timeout=worker.settings.shutdown_grace_s + 5)
            except BaseException:
                task.cancel()
            finally:
                worker.source.close()


@pytest.fixture
async def workers() -> AsyncIterator[RunningWorkers]:
    """Start workers in the test's event loop; all are stopped and closed at teardown."""
    running = RunningWorkers()
    try:
        yield running
    finally:
        await running.close()


@dataclass
class ProxiedDatabase:
    """A DatabaseManager whose connections go through a TCP proxy the test can cut."""

    proxy: TcpProxy
    db: DatabaseManager


@pytest.fixture
async def proxied_database(database_url: str) -> AsyncIterator[ProxiedDatabase]:
    """The session database behind a proxy; the pool is disposed and the proxy closed after."""
    proxy = TcpProxy(database_url)
    await proxy.start()
    url = proxy.url.render_as_string(hide_password=False)
    db = DatabaseManager(DatabaseConfig(database_url=url, db_pool_timeout_s=2))
    try:
        yield ProxiedDatabase(proxy, db)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(db.dispose(), timeout=5)
        await proxy.cut()


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
