"""The worker loop: pull ahead, write one transaction per batch, ack after commit.

One place decides what happens to a batch's messages (``_settle``): committed -> ack; not
committed -> no ack (the lease is released or lapses and Pub/Sub redelivers). Stopping never
cancels a batch mid-commit: the loop finishes the batch in hand, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import text
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from biz2bricks_consumer.batching import Batch, InboundMessage, build_batch
from biz2bricks_consumer.errors import (
    RETRYABLE_PUBSUB_ERRORS,
    BatchAbandoned,
    is_retryable_db_error,
)
from biz2bricks_consumer.leases import LeaseKeeper
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pricing_cache import PricingCache
from biz2bricks_consumer.pubsub import PubSubSource
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.writer import BatchWriter, WriteResult
from biz2bricks_core.database import DatabaseManager

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FAULT_EXIT_AFTER_COMMIT = "exit_after_commit"
# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the per-message path of a long-running worker.

    Every message allocates a few dozen objects; with CPython's defaults a collection runs
    every few messages and, now and then, walks the whole long-lived heap of grpc, SQLAlchemy
    and pydantic. Freezing what exists at start-up and collecting less often cut decoding from
    ~7 us to ~2-3 us per message here (docs/benchmarks.md). Memory stays bounded: almost all
    garbage is freed by reference counting; the collector still runs, only less often.
    Called by the command before the worker starts; embedders may call it too.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class Worker:
    """Consumes the usage subscription until asked to stop (or idle, if configured)."""

    def __init__(
        self,
        settings: ConsumerSettings,
        db: DatabaseManager,
        source: PubSubSource | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.source = source if source is not None else PubSubSource(settings)
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.pricing = PricingCache(db, settings.pricing_refresh_s)
        self.writer = BatchWriter(db, self.pricing.get)
        self.leases = LeaseKeeper(self.source, settings.ack_deadline_s)
        # Pulled-but-unwritten messages, bounded by count: pullers wait while it is full.
        self._queue: asyncio.Queue[list[InboundMessage]] = asyncio.Queue()
        self._buffered = 0
        self._buffer_max = 2 * settings.batch_max_messages
        self._buffer_space = asyncio.Condition()
        self._assembling = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._database_ok = asyncio.Event()
        self._database_ok.set()
        self._acks: set[asyncio.Task[None]] = set()
        self._last_activity = time.monotonic()
        self._stop_deadline: float | None = None

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop pulling; finish the batch in hand within the grace period, then return."""
        if not self._stopping.is_set():
            log.info("consumer.stopping", extra={"grace_s": self.settings.shutdown_grace_s})
            self._stop_deadline = time.monotonic() + self.settings.shutdown_grace_s
            self._stopping.set()

    async def run(self) -> None:
        """Run until stopped; pending acks are flushed and unwritten messages released."""
        await self._retry_db(self.pricing.refresh_if_due)
        pullers = [
            asyncio.create_task(self._pull_loop(), name=f"pull-{i}")
            for i in range(self.settings.pull_concurrency)
        ]
        keeper = asyncio.create_task(self.leases.run(), name="leases")
        try:
            await asyncio.gather(
                *(self._batch_loop() for _ in range(self.settings.write_concurrency))
            )
        finally:
            self._stopping.set()
            async with self._buffer_space:
                self._buffer_space.notify_all()
            # A pull already sent cannot be cancelled (it runs in a thread); wait for it so
            # that what it brings back is released now instead of held until its lease lapses.
            _, late = await asyncio.wait(pullers, timeout=self.settings.pull_timeout_s + 5)
            for puller in late:
                puller.cancel()
            await self._drain_acks()
            await self._release_unwritten()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            log.info("consumer.stopped", extra=self.summary())

    async def _batch_loop(self) -> None:
        """Take pulled messages and write them as batches until stopped or idle.

        Several loops may run: each batch is its own transaction, and counter rows are locked
        in organization order, so concurrent batches wait for each other instead of deadlocking
        while their decoding overlaps the other's commit.
        """
        while True:
            messages = await self._next_messages()
            if messages is None:
                if self.stopping or self._idle_expired():
                    return
                if not self._database_ok.is_set():
                    await self._wait_for_database()
                continue
            await self._process(messages)

    def summary(self) -> dict[str, float]:
        """Counters of this run."""
        m = self.metrics
        return {
            "pulled": m.value("usage_consumer_messages_pulled_total"),
            "inserted": m.value("usage_consumer_events_inserted_total"),
            "duplicates": m.value("usage_consumer_duplicates_total"),
            "acked": m.value("usage_consumer_messages_acked_total"),
            "commit_retries": m.value("usage_consumer_commit_retries_total"),
        }

    def _idle_expired(self) -> bool:
        idle_s = self.settings.exit_when_idle_s
        return (
            idle_s is not None
            and self._queue.empty()
            and time.monotonic() - self._last_activity >= idle_s
        )

    async def _next_messages(self) -> list[InboundMessage] | None:
        """Messages for the next batch, or None after a quarter second with nothing pulled.

        Batches are assembled one at a time (while others are being written): from the first
        pulled response, waiting up to ``batch_linger_s`` for more until ``batch_max_messages``.
        Under a backlog that fills whole batches: fewer transactions, acks and counter updates.
        """
        async with self._assembling:
            return await self._assemble()

    async def _assemble(self) -> list[InboundMessage] | None:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=0.25)
        except TimeoutError:
            return None
        messages = list(first)
        linger_until = time.monotonic() + self.settings.batch_linger_s
        while len(messages) < self.settings.batch_max_messages:
            if not self._queue.empty():
                messages.extend(self._queue.get_nowait())
                continue
            remaining = linger_until - time.monotonic()
            if remaining <= 0 or self.stopping:
                break
            try:
                messages.extend(await asyncio.wait_for(self._queue.get(), timeout=remaining))
            except TimeoutError:
                break
        async with self._buffer_space:
            self._buffered -= len(messages)
            self._buffer_space.notify_all()
        return messages

    async def _pull_loop(self) -> None:
        idle_sleep_s, error_sleep_s = 0.05, 0.5
        while not self.stopping:
            await self._database_ok.wait()  # no pulling while the database is down
            async with self._buffer_space:
                await self._buffer_space.wait_for(
                    lambda: self._buffered < self._buffer_max or self.stopping
                )
            if self.stopping:
                return
            try:
                messages = await self.source.pull(self.settings.pull_max_messages)
            except RETRYABLE_PUBSUB_ERRORS as error:
                log.warning("consumer.pull_failed", extra={"error": str(error)})
                await asyncio.sleep(error_sleep_s)
                error_sleep_s = min(error_sleep_s * 2, 10.0)
                continue
            error_sleep_s = 0.5
            if not messages:
                await asyncio.sleep(idle_sleep_s)
                idle_sleep_s = min(idle_sleep_s * 2, 1.0)
                continue
            if self.stopping:
                with contextlib.suppress(*RETRYABLE_PUBSUB_ERRORS):
                    await self.source.release([m.ack_id for m in messages])
                return
            idle_sleep_s = 0.05
            self._last_activity = time.monotonic()
            self.metrics.pulled.inc(len(messages))
            self.leases.hold(m.ack_id for m in messages)
            self._buffered += len(messages)
            self._queue.put_nowait(messages)

    async def _process(self, messages: list[InboundMessage]) -> None:
        started = time.monotonic()
        batch = build_batch(messages)
        try:
            result = await self._retry_db(self._write, batch)
        except BatchAbandoned:
            log.warning("consumer.batch_abandoned", extra={"messages": len(batch)})
            await self._settle(batch, None)
            return
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.metrics.batch_size.observe(len(batch))
        if batch.oldest_publish_time_s is not None:
            self.metrics.oldest_message_age.set(max(time.time() - batch.oldest_publish_time_s, 0))
        if self.settings.fault == FAULT_EXIT_AFTER_COMMIT:
            log.error("consumer.fault_injected", extra={"fault": FAULT_EXIT_AFTER_COMMIT})
            os._exit(86)
        await self._settle(batch, result)
        self._last_activity = time.monotonic()

    async def _wait_for_database(self) -> None:
        """After an abandoned batch: probe until the database answers, then resume pulling."""
        with contextlib.suppress(BatchAbandoned):
            await self._retry_db(self.check_database)

    async def check_database(self) -> None:
        """Raise unless the database answers `SELECT 1` (readiness, and probing after outages)."""
        async with self.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _write(self, batch: Batch) -> WriteResult:
        await self.pricing.refresh_if_due()
        return await self.writer.write(batch)

    async def _settle(self, batch: Batch, result: WriteResult | None) -> None:
        """The one place that decides: committed -> ack all; not committed -> release all."""
        if result is None:
            self.leases.drop(batch.ack_ids)
            with contextlib.suppress(*RETRYABLE_PUBSUB_ERRORS):
                await self.source.release(batch.ack_ids)
            return
        self.metrics.inserted.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        for reject in result.rejected:
            self.metrics.rejects.labels(reason=reject.reason_code).inc()
            log.warning(
                "consumer.rejected",
                extra={"message_id": reject.message.message_id, "reason": reject.reason},
            )
        task = asyncio.create_task(self._ack(batch.ack_ids))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        if len(self._acks) > 2:
            await asyncio.wait(set(self._acks), return_when=asyncio.FIRST_COMPLETED)

    async def _ack(self, ack_ids: list[str]) -> None:
        try:
            await self.source.ack(ack_ids)
        except RETRYABLE_PUBSUB_ERRORS as error:
            # Committed already: a redelivery inserts nothing, so this costs only a retry.
            log.warning(
                "consumer.ack_failed", extra={"messages": len(ack_ids), "error": str(error)}
            )
        else:
            self.metrics.acked.inc(len(ack_ids))
        finally:
            self.leases.drop(ack_ids)

    async def _drain_acks(self) -> None:
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=self.settings.shutdown_grace_s)

    async def _release_unwritten(self) -> None:
        leftover: list[str] = []
        while not self._queue.empty():
            leftover.extend(m.ack_id for m in self._queue.get_nowait())
        if leftover:
            self.leases.drop(leftover)
            with contextlib.suppress(*RETRYABLE_PUBSUB_ERRORS):
                await self.source.release(leftover)

    async def _retry_db(
        self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``func`` until it succeeds, backing off while the database is unreachable.

        Pulling pauses while this retries. Gives up with BatchAbandoned once stopping and
        past the grace deadline, or after ``commit_retry_max_s``.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable_db_error),
            wait=wait_exponential_jitter(
                multiplier=self.settings.retry_initial_s,
                max=self.settings.retry_max_backoff_s,
                jitter=self.settings.retry_initial_s,
            ),
            stop=self._give_up,
            sleep=self._sleep_unless_stopped,
            before_sleep=self._on_db_failure,
            reraise=True,
        )
        result: T = await retrying(func, *args, **kwargs)
        if not self._database_ok.is_set():
            log.info("consumer.database_back")
            self.metrics.database_up.set(1)
            self._database_ok.set()
        return result

    def _give_up(self, state: RetryCallState) -> bool:
        if state.seconds_since_start is not None and (
            state.seconds_since_start >= self.settings.commit_retry_max_s
        ):
            raise BatchAbandoned("database unreachable for longer than the retry budget")
        return False

    def _on_db_failure(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._database_ok.clear()
        self.metrics.database_up.set(0)
        self.metrics.commit_retries.inc()
        log.warning(
            "consumer.database_unavailable",
            extra={"attempt": state.attempt_number, "error": f"{type(error).__name__}: {error}"},
        )

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        if self._stop_deadline is not None and time.monotonic() >= self._stop_deadline:
            raise BatchAbandoned("grace period over while the database is unreachable")
        if self._stop_deadline is not None:
            seconds = min(seconds, max(self._stop_deadline - time.monotonic(), 0.0))
        await asyncio.sleep(seconds)
