"""The worker against the real emulator and PostgreSQL: promises 1, 2 and 4 end to end."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from biz2bricks_consumer.health import HealthServer
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_core import DatabaseConfig, DatabaseManager
from biz2bricks_devtools.localservices import find_free_port
from tests.consumer import crashing_consumer
from tests.consumer.conftest import ProxiedDatabase, RunningWorkers, stopped_summary
from tests.factories import assert_counter_derivable, event_count, make_event, provisioned_org

ATTRS = {"event_type": "llm.tokens", "schema_version": "1"}


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def ready(port: int) -> bool:
    """True once a worker's /readyz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_published_events_are_written_and_acked(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    org = await provisioned_org(db)
    events = [make_event(org, input_tokens=i + 1) for i in range(1200)]
    await asyncio.to_thread(publish, events)
    worker = await workers.until_idle(consumer_settings(), db)
    assert await event_count(db, org) == 1200
    assert await assert_counter_derivable(db, org) == sum(i + 1 + 100 for i in range(1200))
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 1200


async def test_a_backlog_is_written_in_full_batches(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # The emulator returns at most 100 messages per pull: without waiting (linger) for more,
    # the first batch would be one pull's worth and 1,000 messages would take several batches.
    org = await provisioned_org(db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(1000)])
    settings = consumer_settings(batch_max_messages=1000, batch_linger_s=3.0)
    worker = await workers.until_idle(settings, db)
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 1000
    assert worker.metrics.value("usage_consumer_batch_size_count") == 1
    assert worker.metrics.value("usage_consumer_batch_size_sum") == 1000
    await assert_counter_derivable(db, org)


async def test_redelivered_and_republished_events_count_once(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given events published twice in one go (duplicates within and across batches)
    org = await provisioned_org(db)
    events = [make_event(org) for _ in range(300)]
    await asyncio.to_thread(publish, events + events)
    await workers.until_idle(consumer_settings(), db)
    # When the same events are republished after they were committed
    await asyncio.to_thread(publish, events[:100])
    second = await workers.until_idle(consumer_settings(), db)
    # Then each still counts once
    assert second.metrics.value("usage_consumer_duplicates_total") == 100
    assert second.metrics.value("usage_consumer_events_inserted_total") == 0
    assert await event_count(db, org) == 300
    assert await assert_counter_derivable(db, org) == 300 * 1100


async def test_poison_messages_are_kept_as_rejects_and_the_worker_goes_on(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    org = await provisioned_org(db)
    good = [make_event(org) for _ in range(50)]
    poison = [(b"garbage", ATTRS), (b"{}", ATTRS), (b'{"a":1}', {"schema_version": "7"})]
    await asyncio.to_thread(publish, [*good[:25], *poison, *good[25:]])
    worker = await workers.until_idle(consumer_settings(), db)
    assert await event_count(db, org) == 50
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 53
    rejected = sum(
        worker.metrics.value("usage_consumer_rejects_total", reason=r)
        for r in ("body", "event_id", "schema_version", "invalid", "organization_id")
    )
    assert rejected == 3
    async with db.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT count(*) FROM usage_event_rejects WHERE raw_data = ANY(:d)"),
                {"d": [p[0] for p in poison]},
            )
        ).scalar_one()
    assert stored == 3


@pytest.mark.fault
async def test_database_outage_pauses_without_acking_and_loses_nothing(
    db: DatabaseManager,
    proxied_database: ProxiedDatabase,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given a worker whose database connections go through a proxy
    org = await provisioned_org(db)
    proxy = proxied_database.proxy
    worker = workers.start(consumer_settings(exit_when_idle_s=None), proxied_database.db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(200)])
    await wait_until(lambda: worker.metrics.value("usage_consumer_messages_acked_total") == 200)
    # When the database becomes unreachable while more events arrive
    await proxy.cut()
    await asyncio.to_thread(publish, [make_event(org) for _ in range(300)])
    await asyncio.sleep(4)
    # Then nothing more is acked, and retries back off instead of spinning
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 200
    retries = worker.metrics.value("usage_consumer_commit_retries_total")
    assert 1 <= retries <= 20
    # And once it is back, everything is counted exactly once
    await proxy.start()
    await wait_until(lambda: worker.metrics.value("usage_consumer_messages_acked_total") == 500)
    worker.stop()
    await asyncio.wait_for(workers.task(worker), timeout=30)
    assert await event_count(db, org) == 500
    assert await assert_counter_derivable(db, org) == 500 * 1100


@pytest.mark.fault
async def test_a_crash_between_commit_and_ack_changes_nothing_on_redelivery(
    db: DatabaseManager,
    publish: Callable[..., None],
    worker_process: Callable[..., Any],
) -> None:
    # Given a worker process that dies right after its first commit, before acking
    org = await provisioned_org(db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(400)])
    crashed = worker_process(module="tests.consumer.crashing_consumer")
    assert await asyncio.to_thread(crashed.wait, 60) == crashing_consumer.EXIT_CODE
    committed = await event_count(db, org)
    assert committed > 0
    tokens_after_crash = await assert_counter_derivable(db, org)
    # When a new worker receives the redelivered messages (after the 10 s ack deadline)
    restarted = worker_process("--exit-when-idle", "15")
    _, stderr = await asyncio.to_thread(restarted.communicate, timeout=120)
    # Then the committed batch's redelivery inserted nothing and the rest arrived once
    assert restarted.returncode == 0, stderr[-2000:]
    summary = stopped_summary(stderr)
    assert summary["duplicates"] >= committed
    assert summary["inserted"] == 400 - committed
    assert await event_count(db, org) == 400
    assert await assert_counter_derivable(db, org) == tokens_after_crash + (400 - committed) * 1100


async def test_two_worker_processes_on_one_organization_keep_counters_exact(
    db: DatabaseManager,
    publish: Callable[..., None],
    worker_process: Callable[..., Any],
) -> None:
    # Given two workers with small buffers on one subscription, so that both take messages
    org = await provisioned_org(db)
    small = {
        "CONSUMER_PULL_CONCURRENCY": "1",
        "CONSUMER_PULL_MAX_MESSAGES": "100",
        "CONSUMER_BATCH_MAX_MESSAGES": "100",
    }
    ports = [find_free_port(), find_free_port()]
    workers = [
        worker_process("--exit-when-idle", "3", "--health-port", str(port), **small)
        for port in ports
    ]
    for port in ports:  # both must be pulling before the events arrive
        await wait_until(lambda port=port: ready(port), timeout_s=60)
    # When events for one organization arrive
    await asyncio.to_thread(publish, [make_event(org, input_tokens=i % 97) for i in range(6000)])
    outputs = [await asyncio.to_thread(w.communicate, timeout=120) for w in workers]
    # Then both wrote, neither hit a deadlock, and the counter is exact
    for proc, (_, stderr) in zip(workers, outputs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert "deadlock" not in stderr.lower()
        assert "serialization" not in stderr.lower()
    inserted = [stopped_summary(err)["inserted"] for _, err in outputs]
    assert sum(inserted) == 6000
    assert all(n > 0 for n in inserted), inserted
    assert await event_count(db, org) == 6000
    assert await assert_counter_derivable(db, org) == sum(i % 97 + 100 for i in range(6000))


@pytest.mark.fault
async def test_sigterm_under_load_exits_in_grace_and_loses_or_doubles_nothing(
    db: DatabaseManager,
    publish: Callable[..., None],
    worker_process: Callable[..., Any],
) -> None:
    org = await provisioned_org(db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(20_000)])
    worker = worker_process(
        CONSUMER_SHUTDOWN_GRACE="10",
        CONSUMER_PULL_MAX_MESSAGES="100",
        CONSUMER_BATCH_MAX_MESSAGES="100",
    )
    await wait_until(lambda: event_count(db, org), timeout_s=60)
    sent_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, stderr[-2000:]
    assert time.monotonic() - sent_at < 12
    assert await event_count(db, org) < 20_000  # it was stopped mid-stream
    restarted = worker_process("--exit-when-idle", "5")
    _, stderr = await asyncio.to_thread(restarted.communicate, timeout=180)
    assert restarted.returncode == 0, stderr[-2000:]
    assert await event_count(db, org) == 20_000
    assert await assert_counter_derivable(db, org) == 20_000 * 1100


async def test_health_readiness_and_metrics_endpoints(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    workers: RunningWorkers,
) -> None:
    # Given a running worker and its health server
    worker = workers.start(consumer_settings(exit_when_idle_s=None), db)
    down = DatabaseManager(
        DatabaseConfig(database_url="postgresql://x@127.0.0.1:1/none", db_pool_timeout_s=1)
    )

    async def database_down() -> None:
        async with down.engine.connect():
            pass

    health = HealthServer(
        worker.metrics,
        {
            "database": worker.check_database,
            "pubsub": worker.source.check,
            "pulling": worker.check_pulling,
        },
        "127.0.0.1",
        0,
    )
    await health.start()
    try:
        base = f"http://127.0.0.1:{health.port}"
        await wait_until(lambda: asyncio.to_thread(ready, health.port))
        # Then liveness, readiness and metrics answer
        assert (await asyncio.to_thread(get, base + "/healthz"))[0] == 200
        status, body = await asyncio.to_thread(get, base + "/readyz")
        assert (status, json.loads(body)) == (
            200,
            {"database": "ok", "pubsub": "ok", "pulling": "ok"},
        )
        status, body = await asyncio.to_thread(get, base + "/metrics")
        assert status == 200
        assert "usage_consumer_events_inserted_total" in body
        # When the database check fails, readiness says so and names it
        health.checks["database"] = database_down
        status, body = await asyncio.to_thread(get, base + "/readyz")
        assert status == 503
        results = json.loads(body)
        assert results["database"] != "ok"
        assert "Error" in results["database"]
        assert (results["pubsub"], results["pulling"]) == ("ok", "ok")
    finally:
        await health.close()
        await down.dispose()
