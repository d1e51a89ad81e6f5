"""Turning a batch into an outcome, and acting on it: the one place that decides ack, release
or reject.

committed -> ack every message; retry (the database is unreachable or busy) -> keep the
messages leased and back off; isolate (the database refused the content) -> bisect until the
refused messages are alone, store them as rejects, write the rest; release (retry budget or
shutdown grace spent) -> hand every message back to Pub/Sub. Commit first, then ack: nothing
that is not committed is ever acked, and a bug or a cancellation releases the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from biz2bricks_consumer.batching import Batch, InboundMessage
from biz2bricks_consumer.errors import Outcome, classify_db_error, describe_db_error
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.retry import DatabaseRetry
from biz2bricks_consumer.writer import WriteResult

log = logging.getLogger(__name__)

DATABASE_REFUSED = "database_refused"


class Writer(Protocol):
    """Commits a batch in one transaction, or raises and changes nothing (``BatchWriter``)."""

    async def write(self, batch: Batch) -> WriteResult: ...


class Acknowledger(Protocol):
    """Where messages go once their batch has an outcome (``InFlight``)."""

    async def ack(self, messages: Sequence[InboundMessage]) -> None: ...

    async def release(self, messages: Sequence[InboundMessage]) -> None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt to write a batch: its outcome, with the result or the error."""

    outcome: Outcome
    result: WriteResult | None = None
    error: BaseException | None = None


class BatchCommitter:
    """Writes a batch until it has an outcome; acks, releases or isolates its messages."""

    def __init__(
        self,
        writer: Writer,
        messages: Acknowledger,
        retry: DatabaseRetry,
        metrics: ConsumerMetrics,
        report: Callable[[WriteResult], None],
    ) -> None:
        """``report`` sees the result of every commit, before its messages are acked."""
        self._writer = writer
        self._messages = messages
        self._retry = retry
        self._metrics = metrics
        self._report = report

    async def commit(self, batch: Batch) -> None:
        """Commit the batch and ack it, or release it; raise (after releasing it) on a bug.

        Cancellation (the end of the shutdown grace) releases it too: never acked unless
        committed.
        """
        try:
            await self._commit(batch)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._messages.release(batch.messages))
            raise

    async def attempt(self, batch: Batch) -> Attempt:
        """Write the batch once; RELEASE without writing when the shutdown grace is over.

        Raises what is neither retryable nor a refusal of the content: a bug to surface.
        """
        grace = self._retry.remaining_grace_s()
        if grace is not None and grace <= 0:
            return Attempt(Outcome.RELEASE)
        try:
            result = await self._writer.write(batch)
        except Exception as error:
            outcome = classify_db_error(error)
            if outcome is None:
                raise
            return Attempt(outcome, error=error)
        return Attempt(Outcome.COMMITTED, result)

    async def _commit(self, batch: Batch) -> None:
        started, number = time.monotonic(), 0
        while True:
            number += 1
            if await self._resolve(batch, await self.attempt(batch), number, started):
                return

    async def _resolve(self, batch: Batch, attempt: Attempt, number: int, started: float) -> bool:
        """The one place that decides ack, release or reject; False means "attempt again"."""
        if attempt.outcome is Outcome.COMMITTED:
            assert attempt.result is not None
            self._retry.succeeded()
            self._report(attempt.result)
            await self._messages.ack(batch.messages)
            return True
        if attempt.outcome is Outcome.ISOLATE:
            assert attempt.error is not None
            await self._isolate(batch, attempt.error)
            return True
        if attempt.outcome is Outcome.RETRY:
            assert attempt.error is not None
            self._retry.failed(number, attempt.error)
            if await self._retry.backoff(number, started):
                return False
        await self._release(batch)
        return True

    async def _release(self, batch: Batch) -> None:
        log.warning("consumer.batch_released", extra={"messages": len(batch)})
        await self._messages.release(batch.messages)

    async def _isolate(self, batch: Batch, error: BaseException) -> None:
        """Bisect a batch the database refused; a lone refused event becomes a reject."""
        if batch.rows >= 2:
            for half in batch.halves():
                await self._commit(half)
        elif batch.events:
            reason = describe_db_error(error)
            log.warning(
                "consumer.event_refused",
                extra={"message_id": batch.sources[0].message_id, "reason": reason},
            )
            self._metrics.isolated.inc()
            await self._commit(batch.refused(DATABASE_REFUSED, reason))
        else:
            # Even the reject row was refused: nothing can be stored, so hand it back (the
            # subscription's dead-letter policy ends the loop) and say so loudly.
            log.error(
                "consumer.reject_unstorable",
                extra={"messages": len(batch), "error": describe_db_error(error)},
            )
            await self._messages.release(batch.messages)
