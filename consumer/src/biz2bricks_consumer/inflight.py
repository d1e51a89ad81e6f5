"""Messages pulled but not yet acked or released: the one owner of their ack ids and leases.

Callers hand it messages and say what became of them (``ack`` after a commit, ``release``
when a batch is given up); it keeps their leases alive meanwhile and never acks on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from biz2bricks_consumer.batching import InboundMessage
from biz2bricks_consumer.errors import RETRYABLE_PUBSUB_ERRORS, SUBSCRIPTION_MISSING_ERRORS
from biz2bricks_consumer.metrics import ConsumerMetrics

log = logging.getLogger(__name__)

# Acks sent concurrently before the next batch waits for one to finish.
MAX_PENDING_ACKS = 2
# Failures an ack, release or lease extension may meet that cost only a redelivery (never an
# error to raise).
ACK_ERRORS = (*RETRYABLE_PUBSUB_ERRORS, *SUBSCRIPTION_MISSING_ERRORS)


class AckSource(Protocol):
    """What the in-flight set needs of the subscription."""

    async def ack(self, ack_ids: Sequence[str]) -> None: ...

    async def extend(self, ack_ids: Sequence[str], seconds: int) -> None: ...

    async def release(self, ack_ids: Sequence[str]) -> None: ...


class InFlight:
    """Holds leases on pulled messages until they are acked or released."""

    def __init__(self, source: AckSource, ack_deadline_s: int, metrics: ConsumerMetrics) -> None:
        self._source = source
        self._deadline_s = ack_deadline_s
        self._metrics = metrics
        self._held: dict[str, float] = {}
        self._acks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, messages: Iterable[InboundMessage]) -> None:
        """Start keeping the lease of messages just pulled."""
        now = time.monotonic()
        for message in messages:
            self._held[message.ack_id] = now

    async def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Ack committed messages in the background; waits while too many acks are pending."""
        ack_ids = [m.ack_id for m in messages]
        task = asyncio.create_task(self._ack(ack_ids), name="ack")
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        if len(self._acks) > MAX_PENDING_ACKS:
            await asyncio.wait(set(self._acks), return_when=asyncio.FIRST_COMPLETED)

    async def release(self, messages: Sequence[InboundMessage]) -> None:
        """Hand messages back for redelivery now; they were not committed."""
        await self._release([m.ack_id for m in messages])

    async def release_all(self) -> None:
        """Release whatever is still held (at shutdown, after pending acks finished)."""
        await self._release(list(self._held))

    async def drain(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for acks already sent."""
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=max(timeout_s, 0.0))

    async def _ack(self, ack_ids: list[str]) -> None:
        try:
            await self._source.ack(ack_ids)
        except ACK_ERRORS as error:
            # Committed already: a redelivery inserts nothing, so this costs only a retry.
            log.warning(
                "consumer.ack_failed", extra={"messages": len(ack_ids), "error": str(error)}
            )
        else:
            self._metrics.acked.inc(len(ack_ids))
        finally:
            self._drop(ack_ids)

    async def _release(self, ack_ids: list[str]) -> None:
        self._drop(ack_ids)
        if ack_ids:
            with contextlib.suppress(*ACK_ERRORS):
                await self._source.release(ack_ids)

    def _drop(self, ack_ids: Iterable[str]) -> None:
        for ack_id in ack_ids:
            self._held.pop(ack_id, None)

    async def keep_leases(self) -> None:
        """Every third of the deadline, extend messages held for over half of it (runs forever)."""
        interval_s = max(self._deadline_s / 3, 1.0)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            due = [a for a, since in self._held.items() if now - since >= self._deadline_s / 2]
            if not due:
                continue
            try:
                await self._source.extend(due, self._deadline_s)
            except ACK_ERRORS as error:  # a lapsed lease only causes a harmless redelivery
                log.warning("consumer.lease_extend_failed", extra={"error": str(error)})
                continue
            for ack_id in due:
                if ack_id in self._held:
                    self._held[ack_id] = now
