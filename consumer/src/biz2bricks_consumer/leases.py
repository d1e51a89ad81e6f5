"""Keeping leases alive on messages pulled but not yet settled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)


class LeaseSource(Protocol):
    """What the keeper needs of the subscription."""

    async def extend(self, ack_ids: list[str], seconds: int) -> None: ...


class LeaseKeeper:
    """Extends the ack deadline of held messages before it lapses (slow batches, DB outages)."""

    def __init__(self, source: LeaseSource, ack_deadline_s: int) -> None:
        self._source = source
        self._deadline_s = ack_deadline_s
        self._held: dict[str, float] = {}

    def hold(self, ack_ids: Iterable[str]) -> None:
        """Start tracking messages just pulled."""
        now = time.monotonic()
        for ack_id in ack_ids:
            self._held[ack_id] = now

    def drop(self, ack_ids: Iterable[str]) -> None:
        """Stop tracking messages that were acked or released."""
        for ack_id in ack_ids:
            self._held.pop(ack_id, None)

    def __len__(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        """Every third of the deadline, extend messages held for over half of it."""
        interval_s = max(self._deadline_s / 3, 1.0)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            due = [a for a, since in self._held.items() if now - since >= self._deadline_s / 2]
            if not due:
                continue
            try:
                await self._source.extend(due, self._deadline_s)
            except Exception as error:  # a lapsed lease only causes a harmless redelivery
                log.warning("consumer.lease_extend_failed", extra={"error": str(error)})
                continue
            for ack_id in due:
                if ack_id in self._held:
                    self._held[ack_id] = now
