"""Promise 4 against the real emulator and PostgreSQL: no message, lost subscription or
outage stops the worker, and SIGTERM always exits 0 within the grace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from sqlalchemy import text

from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.committer import Writer
from biz2bricks_consumer.health import HealthServer
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pricing_cache import PricedWriter, PricingCache
from biz2bricks_consumer.pubsub import PubSubSource
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.supervision import Supervisor
from biz2bricks_consumer.writer import WriteResult
from biz2bricks_core import DatabaseManager
from biz2bricks_devtools.localservices import find_free_port
from tests.conftest import PubSubNames
from tests.consumer.conftest import ProxiedDatabase, RunningWorkers
from tests.consumer.test_worker import get, ready, wait_until
from tests.factories import assert_counter_derivable, event_count, make_event, provisioned_org

ATTRS = {"event_type": "llm.tokens", "schema_version": "1"}
GRACE_S = 3.0


def event_body(org: uuid.UUID, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(org),
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 1,
    }
    fields.update(overrides)
    return json.dumps(fields).encode()


def poisons(org: uuid.UUID) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every kind of message that used to stop the worker, or could."""
    with_org = {**ATTRS, "organization_id": str(org)}
    return {
        "nul-model": (event_body(org, model="gpt-4o\u0000x"), with_org),
        "nul-operation": (event_body(org, operation="op\u0000"), with_org),
        "nul-request-id": (event_body(org, request_id="\u0000"), with_org),
        "nul-metadata-value": (event_body(org, metadata={"k": "v\u0000"}), with_org),
        "nul-metadata-key": (event_body(org, metadata={"k\u0000": 1}), with_org),
        "nul-attribute": (b"rejected anyway", {**ATTRS, "note\x00": "a\x00b"}),
        "deep-json-no-org": (b"[" * 1000 + b"]" * 1000, ATTRS),
        "invalid-utf8": (b'{"model": "\xff\xfe\xfd"}', with_org),
        "huge-body": (b"x" * 300_000, with_org),
        "unknown-field-with-nul": (event_body(org, **{"x\u0000": 1}), with_org),
    }


async def reject_rows(db: DatabaseManager, data: bytes) -> list[Any]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT * FROM usage_event_rejects WHERE raw_data = :d"), {"d": data}
        )
        return list(result)


@pytest.mark.parametrize("kind", list(poisons(uuid.uuid4())))
async def test_each_poison_alone_among_valid_events_is_one_reject_and_the_rest_is_written(
    kind: str,
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given one poison message among 20 valid events
    org = await provisioned_org(db)
    data, attributes = poisons(org)[kind]
    good = [make_event(org) for _ in range(20)]
    await asyncio.to_thread(publish, [*good[:10], (data, attributes), *good[10:]])
    # When a worker runs until idle
    worker = await workers.until_idle(consumer_settings(), db)
    # Then every valid event is written, the poison is one reject, everything is acked
    assert await event_count(db, org) == 20
    assert await assert_counter_derivable(db, org) == 20 * 1100
    [row] = await reject_rows(db, data)
    assert "\x00" not in row.reason
    assert "\x00" not in json.dumps(row.attributes)
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 21


async def test_content_the_database_refuses_is_isolated_by_bisecting_the_batch(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given a rule only the database enforces (the contract lets the event through)
    org = await provisioned_org(db)
    constraint = f"test_refuse_{uuid.uuid4().hex[:8]}"
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                f"ALTER TABLE usage_events ADD CONSTRAINT {constraint}"
                " CHECK (model <> 'refused-by-database') NOT VALID"
            )
        )
    try:
        refused = make_event(org, model="refused-by-database")
        good = [make_event(org) for _ in range(60)]
        await asyncio.to_thread(publish, [*good[:30], refused, *good[30:]])
        # When the worker meets it in a batch (one batch: linger until all 61 arrived)
        worker = await workers.until_idle(consumer_settings(batch_linger_s=2.0), db)
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE usage_events DROP CONSTRAINT {constraint}"))
    # Then the 60 others are written and the refused one is a reject with the database's error
    assert await event_count(db, org) == 60
    assert await assert_counter_derivable(db, org) == 60 * 1100
    async with db.engine.connect() as conn:
        [row] = (
            await conn.execute(
                text("SELECT * FROM usage_event_rejects WHERE reason LIKE :id"),
                {"id": f"%{constraint}%"},
            )
        ).all()
    assert row.reason_code == "database_refused"
    assert "SQLSTATE 23514" in row.reason
    assert row.organization_id == org
    assert worker.metrics.value("usage_consumer_isolated_total") == 1
    assert worker.metrics.value("usage_consumer_messages_acked_total") == 61


async def test_a_conflicting_duplicate_is_kept_and_an_identical_one_is_silent(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    org = await provisioned_org(db)
    first = make_event(org, input_tokens=500)
    await asyncio.to_thread(publish, [first])
    await workers.until_idle(consumer_settings(), db)
    changed = first.model_copy(update={"input_tokens": 50_000})
    await asyncio.to_thread(publish, [first, changed])
    worker = await workers.until_idle(consumer_settings(), db)
    assert worker.metrics.value("usage_consumer_conflicting_duplicates_total") == 1
    assert worker.metrics.value("usage_consumer_duplicates_total") == 1
    assert await event_count(db, org) == 1
    assert await assert_counter_derivable(db, org) == 600
    async with db.engine.connect() as conn:
        reasons = (
            (
                await conn.execute(
                    text(
                        "SELECT reason FROM usage_event_rejects"
                        " WHERE reason_code = 'conflicting_duplicate' AND organization_id = :o"
                    ),
                    {"o": org},
                )
            )
            .scalars()
            .all()
        )
    assert len(reasons) == 1
    assert "input_tokens: stored 500, received 50000" in reasons[0]


class FailingOnceSource(PubSubSource):
    """A subscription whose first pull dies of an unexpected error (a bug, not Pub/Sub)."""

    failed = False

    async def pull(self, max_messages: int) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("unexpected failure in a pull loop")
        return await super().pull(max_messages)


async def test_a_pull_loop_that_dies_is_restarted(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    org = await provisioned_org(db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(50)])
    settings = consumer_settings(pull_concurrency=1, exit_when_idle_s=3.0)
    worker = await workers.until_idle(settings, db, source=FailingOnceSource(settings))
    assert worker.metrics.value("usage_consumer_task_restarts_total", task="pull") == 1
    assert await event_count(db, org) == 50


async def test_a_task_that_keeps_dying_is_given_up_so_the_process_can_exit() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(ConsumerMetrics(), stopping, initial_backoff_s=0.01, max_failures=3)
    calls = 0

    async def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("broken")

    await asyncio.wait_for(supervisor.start("pull-0", always_fails), timeout=10)
    assert calls == 3
    assert supervisor.failed.is_set()
    assert isinstance(supervisor.failure, RuntimeError)
    assert supervisor.alive("pull") == 0


def recreate_subscription(names: PubSubNames) -> None:
    with pubsub_v1.SubscriberClient() as subscriber, contextlib.suppress(gexc.AlreadyExists):
        subscriber.create_subscription(
            name=names.subscription_path, topic=names.topic_path, ack_deadline_seconds=10
        )


def delete_subscription(names: PubSubNames) -> None:
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.delete_subscription(subscription=names.subscription_path)


@pytest.mark.fault
async def test_pulling_resumes_when_the_subscription_is_recreated_and_readyz_shows_the_gap(
    db: DatabaseManager,
    pubsub_names: PubSubNames,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given a running worker with its health server
    org = await provisioned_org(db)
    worker = workers.start(consumer_settings(exit_when_idle_s=None), db)
    health = HealthServer(
        worker.metrics,
        {"pulling": worker.check_pulling, "pubsub": worker.source.check},
        "127.0.0.1",
        0,
    )
    await health.start()
    url = f"http://127.0.0.1:{health.port}/readyz"
    try:
        await asyncio.to_thread(publish, [make_event(org) for _ in range(100)])
        await wait_until(lambda: worker.metrics.value("usage_consumer_messages_acked_total") == 100)
        assert await asyncio.to_thread(ready, health.port)
        # When the subscription disappears, readiness turns false and names why
        await asyncio.to_thread(delete_subscription, pubsub_names)
        await wait_until(lambda: worker.buffer.subscription_missing, timeout_s=30)
        status, body = await asyncio.to_thread(get, url)
        assert status == 503
        assert "missing" in json.loads(body)["pulling"]
        # And when it is back, pulling resumes by itself and nothing published since is lost
        await asyncio.to_thread(recreate_subscription, pubsub_names)
        await asyncio.to_thread(publish, [make_event(org) for _ in range(100)])
        await wait_until(
            lambda: worker.metrics.value("usage_consumer_messages_acked_total") == 200,
            timeout_s=60,
        )
        assert await asyncio.to_thread(ready, health.port)
    finally:
        await health.close()
        await asyncio.to_thread(recreate_subscription, pubsub_names)
    assert await event_count(db, org) == 200
    assert await assert_counter_derivable(db, org) == 200 * 1100


def alive(port: int) -> bool:
    """True once a worker process serves /healthz."""
    try:
        return get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


def pulling_status(port: int) -> str:
    """The "pulling" entry of a worker process's /readyz."""
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    return str(json.loads(body).get("pulling", "")) if status in (200, 503) else ""


async def sigterm_and_time(proc: Any) -> tuple[float, str]:
    """Send SIGTERM; return the seconds until the process exited, and its stderr."""
    sent_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    return time.monotonic() - sent_at, stderr


@pytest.mark.fault
async def test_sigterm_with_the_database_down_from_the_start_exits_0_within_the_grace(
    worker_process: Callable[..., Any],
) -> None:
    port = find_free_port()
    proc = worker_process(
        "--health-port",
        str(port),
        DATABASE_URL=f"postgresql://nobody@127.0.0.1:{find_free_port()}/none",
        CONSUMER_SHUTDOWN_GRACE=str(GRACE_S),
    )
    await wait_until(lambda: alive(port), timeout_s=90)  # started: health serves
    await asyncio.sleep(1)  # retrying the first pricing load by now
    elapsed, stderr = await sigterm_and_time(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert "consumer.database_unavailable" in stderr
    assert "Traceback" not in stderr
    assert elapsed < GRACE_S + 1, elapsed


@pytest.mark.fault
async def test_sigterm_with_the_subscription_missing_exits_0_within_the_grace(
    pubsub_names: PubSubNames, worker_process: Callable[..., Any]
) -> None:
    port = find_free_port()
    proc = worker_process("--health-port", str(port), CONSUMER_SHUTDOWN_GRACE=str(GRACE_S))
    try:
        await wait_until(lambda: ready(port), timeout_s=90)
        await asyncio.to_thread(delete_subscription, pubsub_names)
        await wait_until(lambda: "missing" in pulling_status(port), timeout_s=30)
        elapsed, stderr = await sigterm_and_time(proc)
    finally:
        await asyncio.to_thread(recreate_subscription, pubsub_names)
    assert proc.returncode == 0, stderr[-3000:]
    assert "consumer.subscription_missing" in stderr
    assert "Traceback" not in stderr
    assert elapsed < GRACE_S + 1, elapsed


@pytest.mark.fault
async def test_sigterm_mid_batch_with_the_database_gone_exits_0_and_acks_nothing_uncommitted(
    db: DatabaseManager,
    proxied_database: ProxiedDatabase,
    publish: Callable[..., None],
    worker_process: Callable[..., Any],
) -> None:
    # Given a worker process writing through a proxy, with batches committed
    org = await provisioned_org(db)
    url = proxied_database.proxy.url.render_as_string(hide_password=False)
    proc = worker_process(DATABASE_URL=url, CONSUMER_SHUTDOWN_GRACE=str(GRACE_S))
    await asyncio.to_thread(publish, [make_event(org) for _ in range(300)])
    await wait_until(lambda: event_count(db, org), timeout_s=60)
    # When the database goes away with a batch in hand, and SIGTERM arrives
    await proxied_database.proxy.cut()
    await asyncio.to_thread(publish, [make_event(org) for _ in range(300)])
    await asyncio.sleep(2)
    elapsed, stderr = await sigterm_and_time(proc)
    # Then it exits 0 in time, and a new worker finds every uncommitted message still there
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert elapsed < GRACE_S + 1, elapsed
    restarted = worker_process("--exit-when-idle", "5")
    _, stderr = await asyncio.to_thread(restarted.communicate, timeout=180)
    assert restarted.returncode == 0, stderr[-2000:]
    assert await event_count(db, org) == 600
    assert await assert_counter_derivable(db, org) == 600 * 1100


class HangingAfterCommitSource(PubSubSource):
    """A subscription that stops answering once a batch committed: acks hang, pulls time out."""

    def __init__(self, settings: ConsumerSettings) -> None:
        super().__init__(settings)
        self.hanging = False
        self.pulling = asyncio.Event()

    async def pull(self, max_messages: int) -> Any:
        if self.hanging:
            self.pulling.set()
            await asyncio.sleep(self._settings.pull_timeout_s)  # a pull that runs to its timeout
            return []
        return await super().pull(max_messages)

    async def ack(self, ack_ids: Any) -> None:
        if self.hanging:
            await asyncio.Event().wait()  # an ack Pub/Sub never answers
        await super().ack(ack_ids)


class HangsPubSubAfterCommit:
    """A writer that commits through ``writer``, then makes ``source`` hang, before the ack."""

    def __init__(
        self, writer: Writer, source: HangingAfterCommitSource, committed: asyncio.Event
    ) -> None:
        self._writer = writer
        self._source = source
        self._committed = committed

    async def write(self, batch: Batch) -> WriteResult:
        result = await self._writer.write(batch)
        self._source.hanging = True
        self._committed.set()
        return result


async def test_stop_returns_within_the_grace_when_pubsub_hangs_with_an_ack_pending(
    db: DatabaseManager,
    consumer_settings: Callable[..., ConsumerSettings],
    publish: Callable[..., None],
    workers: RunningWorkers,
) -> None:
    # Given a worker whose first batch committed just as Pub/Sub stopped answering
    org = await provisioned_org(db)
    await asyncio.to_thread(publish, [make_event(org) for _ in range(5)])
    settings = consumer_settings(
        exit_when_idle_s=None, shutdown_grace_s=GRACE_S, pull_timeout_s=2.0, pull_concurrency=1
    )
    source = HangingAfterCommitSource(settings)
    committed = asyncio.Event()
    pricing = PricingCache(db, settings.pricing_refresh_s)
    writer = HangsPubSubAfterCommit(PricedWriter(db, pricing), source, committed)
    worker = workers.start(settings, db, source=source, pricing=pricing, writer=writer)
    await asyncio.wait_for(committed.wait(), timeout=60)
    source.pulling.clear()
    await asyncio.wait_for(source.pulling.wait(), timeout=10)
    # When it is asked to stop while a pull waits for its timeout
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(asyncio.shield(workers.task(worker)), timeout=GRACE_S + 10)
    # Then it returns within the grace, its events stored
    assert time.monotonic() - started <= GRACE_S + 0.5
    assert await event_count(db, org) == 5


@pytest.mark.fault
@pytest.mark.parametrize("launcher", ["module", "console_script"])
def test_sigterm_while_the_worker_is_still_importing_exits_0(
    launcher: str, pubsub_names: PubSubNames, database_url: str
) -> None:
    # Given a consumer just launched (its imports take a second or more)
    command = (
        [sys.executable, "-m", "biz2bricks_consumer"]
        if launcher == "module"
        else [str(Path(sys.executable).with_name("biz2bricks-consumer"))]
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "USAGE_TOPIC": pubsub_names.topic,
        "USAGE_SUBSCRIPTION": pubsub_names.subscription,
    }
    proc = subprocess.Popen(
        [*command, "--health-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # When the platform stops it before it got going
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Then it exits cleanly (not killed by the signal), without a traceback
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
