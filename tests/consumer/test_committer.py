"""The batch committer driven directly: each outcome of a write decides ack, release or reject.

The writer is the real one on real PostgreSQL, behind an injected fault; acks and releases are
recorded instead of sent (the committer only decides them; InFlight sends them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from biz2bricks_consumer.batching import Batch, InboundMessage, build_batch
from biz2bricks_consumer.committer import BatchCommitter, Writer
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.retry import DatabaseRetry
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.writer import BatchWriter, WriteResult
from biz2bricks_core import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from tests.factories import (
    assert_counter_derivable,
    event_count,
    make_event,
    message_for,
    provisioned_org,
)

REFUSED_MODEL = "refused-by-the-database"


class RecordedAcks:
    """Where the committer hands messages: recorded, in order, instead of sent to Pub/Sub."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.released: list[str] = []

    async def ack(self, messages: Sequence[InboundMessage]) -> None:
        self.acked.extend(m.ack_id for m in messages)

    async def release(self, messages: Sequence[InboundMessage]) -> None:
        self.released.extend(m.ack_id for m in messages)


class FailingWriter:
    """The real writer behind a fault: ``fail(batch)`` returns the error to raise, or None."""

    def __init__(self, writer: Writer, fail: Callable[[Batch], BaseException | None]) -> None:
        self._writer = writer
        self._fail = fail
        self.calls = 0

    async def write(self, batch: Batch) -> WriteResult:
        self.calls += 1
        error = self._fail(batch)
        if error is not None:
            raise error
        return await self._writer.write(batch)


class Committing:
    """A committer on real PostgreSQL with its collaborators, as a test sees them."""

    def __init__(self, db: DatabaseManager, writer: Writer, **settings: Any) -> None:
        values: dict[str, Any] = {"project_id": "committer-tests", "retry_initial_s": 0.01}
        self.settings = ConsumerSettings(**{**values, **settings})
        self.metrics = ConsumerMetrics()
        self.retry = DatabaseRetry(self.settings, self.metrics)
        self.acks = RecordedAcks()
        self.results: list[WriteResult] = []
        self.committer = BatchCommitter(
            writer, self.acks, self.retry, self.metrics, self.results.append
        )


@pytest.fixture
async def real_writer(db: DatabaseManager) -> BatchWriter:
    book = await load_price_book(db, ModelNames())
    return BatchWriter(db, lambda: book)


def ack_ids(batch: Batch) -> list[str]:
    return sorted(m.ack_id for m in batch.messages)


def connection_lost() -> BaseException:
    return asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")


async def test_a_retryable_error_is_retried_then_the_batch_is_committed_and_acked(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a writer that loses its connection twice, then works
    org = await provisioned_org(db)
    batch = build_batch(message_for(make_event(org)) for _ in range(10))
    failures = iter([connection_lost(), connection_lost()])
    writer = FailingWriter(real_writer, lambda _: next(failures, None))
    c = Committing(db, writer)
    # When the committer commits the batch
    await c.committer.commit(batch)
    # Then it was attempted three times, written once, and every message acked, none released
    assert writer.calls == 3
    assert c.metrics.value("usage_consumer_commit_retries_total") == 2
    assert c.retry.database_ok.is_set()
    assert await event_count(db, org) == 10
    assert await assert_counter_derivable(db, org) == 10 * 1100
    assert [r.inserted for r in c.results] == [10]
    assert sorted(c.acks.acked) == ack_ids(batch)
    assert c.acks.released == []


def refuses_model(batch: Batch) -> BaseException | None:
    if any(e.model == REFUSED_MODEL for e in batch.events):
        return asyncpg.exceptions.CheckViolationError("violates check constraint")
    return None


async def test_refused_content_is_bisected_until_the_refused_event_is_a_reject(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a batch of 15 events of which the database refuses one
    org = await provisioned_org(db)
    events = [make_event(org) for _ in range(15)]
    events[6] = make_event(org, model=REFUSED_MODEL)
    batch = build_batch(message_for(e) for e in events)
    refused_message = batch.sources[6]
    writer = FailingWriter(real_writer, refuses_model)
    c = Committing(db, writer)
    # When the committer commits it
    await c.committer.commit(batch)
    # Then the 14 others are written, the refused one is a reject with the database's error,
    # and every message is acked (none released, nothing retried)
    assert await event_count(db, org) == 14
    assert await assert_counter_derivable(db, org) == 14 * 1100
    async with db.engine.connect() as conn:
        [row] = (
            await conn.execute(
                text("SELECT * FROM usage_event_rejects WHERE message_id = :m"),
                {"m": refused_message.message_id},
            )
        ).all()
    assert row.reason_code == "database_refused"
    assert "SQLSTATE 23514" in row.reason
    assert row.organization_id == org
    assert c.metrics.value("usage_consumer_isolated_total") == 1
    assert c.metrics.value("usage_consumer_commit_retries_total") == 0
    assert sorted(c.acks.acked) == ack_ids(batch)
    assert c.acks.released == []


async def test_a_batch_is_released_unwritten_when_the_shutdown_grace_is_over(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a committer whose shutdown grace has ended
    org = await provisioned_org(db)
    batch = build_batch(message_for(make_event(org)) for _ in range(5))
    writer = FailingWriter(real_writer, lambda _: None)
    c = Committing(db, writer)
    c.retry.begin_stop(time.monotonic())
    # When it is handed a batch
    await c.committer.commit(batch)
    # Then nothing is written and every message is released, none acked
    assert writer.calls == 0
    assert await event_count(db, org) == 0
    assert sorted(c.acks.released) == ack_ids(batch)
    assert c.acks.acked == []


async def test_a_batch_is_released_when_the_grace_ends_while_the_database_is_down(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a database that stays unreachable, and a stop with half a second of grace
    org = await provisioned_org(db)
    batch = build_batch(message_for(make_event(org)) for _ in range(5))
    writer = FailingWriter(real_writer, lambda _: connection_lost())
    c = Committing(db, writer, retry_initial_s=0.05, retry_max_backoff_s=0.1)
    started = time.monotonic()
    c.retry.begin_stop(started + 0.5)
    # When the committer commits the batch
    await c.committer.commit(batch)
    # Then it gave up within the grace, after retrying, and released everything unacked
    assert time.monotonic() - started < 2.0
    assert writer.calls >= 2
    assert sorted(c.acks.released) == ack_ids(batch)
    assert c.acks.acked == []
    assert await event_count(db, org) == 0


async def test_a_batch_is_released_when_the_retry_budget_is_spent(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a database that stays unreachable and a retry budget of a quarter second
    org = await provisioned_org(db)
    batch = build_batch(message_for(make_event(org)) for _ in range(5))
    writer = FailingWriter(real_writer, lambda _: connection_lost())
    c = Committing(db, writer, commit_retry_max_s=0.25, retry_max_backoff_s=0.05)
    # When the committer commits the batch
    await c.committer.commit(batch)
    # Then it released every message once the budget was spent, and the database counts as down
    assert writer.calls >= 2
    assert sorted(c.acks.released) == ack_ids(batch)
    assert c.acks.acked == []
    assert not c.retry.database_ok.is_set()
    assert await event_count(db, org) == 0


async def test_a_bug_in_the_write_raises_and_releases_the_batch(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a writer with a bug (an error that is neither retryable nor a refusal)
    org = await provisioned_org(db)
    batch = build_batch(message_for(make_event(org)) for _ in range(5))
    writer = FailingWriter(real_writer, lambda _: ValueError("a bug"))
    c = Committing(db, writer)
    # When the committer commits the batch
    with pytest.raises(ValueError, match="a bug"):
        await c.committer.commit(batch)
    # Then it was not retried, and every message is released, none acked
    assert writer.calls == 1
    assert sorted(c.acks.released) == ack_ids(batch)
    assert c.acks.acked == []
    assert await event_count(db, org) == 0


async def test_a_crash_after_the_commit_leaves_the_batch_committed_and_unacked(
    db: DatabaseManager, real_writer: BatchWriter
) -> None:
    # Given a writer that commits, then fails before the committer can ack (a crash)
    org = await provisioned_org(db)
    events = [make_event(org) for _ in range(5)]
    batch = build_batch(message_for(e) for e in events)

    class CrashAfterCommit:
        async def write(self, batch: Batch) -> WriteResult:
            await real_writer.write(batch)
            raise SystemExit(86)

    c = Committing(db, CrashAfterCommit())
    with pytest.raises(SystemExit):
        await c.committer.commit(batch)
    assert c.acks.acked == []
    # When the redelivered batch is committed again
    redelivered = build_batch(message_for(e) for e in events)
    again = Committing(db, real_writer)
    await again.committer.commit(redelivered)
    # Then it inserts nothing and counts nothing twice, and is acked
    assert [(r.inserted, r.duplicates) for r in again.results] == [(0, 5)]
    assert await event_count(db, org) == 5
    assert await assert_counter_derivable(db, org) == 5 * 1100
    assert sorted(again.acks.acked) == ack_ids(redelivered)
