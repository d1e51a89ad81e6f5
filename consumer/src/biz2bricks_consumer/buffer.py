"""Pulling ahead of the writers: the pull loops, the memory bound, and batch assembly.

Pulled-but-unwritten messages are bounded by count (pullers wait while the buffer is full).
Batches are assembled one at a time from the first pulled response, lingering up to
``batch_linger_s`` for more until ``batch_max_messages``: under a backlog that fills whole
batches, so fewer transactions, acks and counter updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from biz2bricks_consumer.batching import InboundMessage
from biz2bricks_consumer.errors import RETRYABLE_PUBSUB_ERRORS, SUBSCRIPTION_MISSING_ERRORS
from biz2bricks_consumer.inflight import InFlight
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pubsub import PubSubSource
from biz2bricks_consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)

# How long ``next_messages`` waits for a first pulled response before reporting "nothing".
ASSEMBLY_POLL_S = 0.25


class PullBuffer:
    """Owns the pull loops and the messages they brought that no batch has taken yet."""

    def __init__(
        self,
        settings: ConsumerSettings,
        source: PubSubSource,
        inflight: InFlight,
        metrics: ConsumerMetrics,
        *,
        database_ok: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._source = source
        self._inflight = inflight
        self._metrics = metrics
        self._database_ok = database_ok
        self._stopping = stopping
        self._queue: asyncio.Queue[list[InboundMessage]] = asyncio.Queue()
        self._buffered = 0
        self._buffer_max = 2 * settings.batch_max_messages
        self._space = asyncio.Condition()
        self._assembling = asyncio.Lock()
        self.last_activity = time.monotonic()
        self.subscription_missing = False

    def empty(self) -> bool:
        """True when no pulled message waits for a batch."""
        return self._queue.empty()

    async def wake(self) -> None:
        """Wake pullers waiting for buffer space (on stop)."""
        async with self._space:
            self._space.notify_all()

    async def next_messages(self) -> list[InboundMessage] | None:
        """Messages for the next batch, or None after a quarter second with nothing pulled."""
        async with self._assembling:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=ASSEMBLY_POLL_S)
            except TimeoutError:
                return None
            messages = list(first)
            linger_until = time.monotonic() + self._settings.batch_linger_s
            while len(messages) < self._settings.batch_max_messages:
                if not self._queue.empty():
                    messages.extend(self._queue.get_nowait())
                    continue
                remaining = linger_until - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                try:
                    messages.extend(await asyncio.wait_for(self._queue.get(), timeout=remaining))
                except TimeoutError:
                    break
        async with self._space:
            self._buffered -= len(messages)
            self._space.notify_all()
        return messages

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _until_database_ok(self) -> None:
        """No pulling while the database is down; stopping wakes this too."""
        if self._database_ok.is_set():
            return
        waits = {
            asyncio.create_task(self._database_ok.wait()),
            asyncio.create_task(self._stopping.wait()),
        }
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def pull_loop(self) -> None:
        """Pull into the buffer until stopping; back off on errors and a missing subscription."""
        idle_sleep_s, error_sleep_s = 0.05, 0.5
        while not self._stopping.is_set():
            await self._until_database_ok()
            async with self._space:
                await self._space.wait_for(
                    lambda: self._buffered < self._buffer_max or self._stopping.is_set()
                )
            if self._stopping.is_set():
                return
            try:
                messages = await self._source.pull(self._settings.pull_max_messages)
            except SUBSCRIPTION_MISSING_ERRORS as error:
                if not self.subscription_missing:
                    log.error("consumer.subscription_missing", extra={"error": str(error)})
                self.subscription_missing = True
                await self._pause(error_sleep_s)
                error_sleep_s = min(error_sleep_s * 2, 5.0)
                continue
            except RETRYABLE_PUBSUB_ERRORS as error:
                log.warning("consumer.pull_failed", extra={"error": str(error)})
                await self._pause(error_sleep_s)
                error_sleep_s = min(error_sleep_s * 2, 10.0)
                continue
            if self.subscription_missing:
                log.info("consumer.subscription_back")
                self.subscription_missing = False
            error_sleep_s = 0.5
            if not messages:
                await self._pause(idle_sleep_s)
                idle_sleep_s = min(idle_sleep_s * 2, 1.0)
                continue
            if self._stopping.is_set():
                await self._inflight.release(messages)
                return
            idle_sleep_s = 0.05
            self.last_activity = time.monotonic()
            self._metrics.pulled.inc(len(messages))
            self._inflight.hold(messages)
            self._buffered += len(messages)
            self._queue.put_nowait(messages)
