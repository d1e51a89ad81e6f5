"""An in-memory PriceBook of ``model_pricing``, refreshed before the writes that read it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable

from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.writer import BatchWriter, WriteResult
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.pricing import PriceBook

log = logging.getLogger(__name__)


class PricingCache:
    """Holds the current PriceBook; ``get`` never does I/O, ``refresh_if_due`` does.

    The model-name resolver outlives refreshes: what it learnt about a name does not depend
    on the rows in the table.
    """

    def __init__(
        self, db: DatabaseManager, refresh_s: float, names: ModelNames | None = None
    ) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._names = names if names is not None else ModelNames()
        self._book = PriceBook(resolver=self._names)
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    def get(self) -> PriceBook:
        """The PriceBook as of the last refresh."""
        return self._book

    async def refresh_if_due(self) -> None:
        """Reload prices when the refresh interval has passed; keep the old book on failure."""
        if time.monotonic() - self._loaded_at < self._refresh_s:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < self._refresh_s:
                return
            self._book = await load_price_book(self._db, self._names)
            self._loaded_at = time.monotonic()
            log.info("pricing.refreshed", extra={"versions": len(self._book)})


class PricedWriter:
    """The batch writer with current prices: refreshes them (when due) before each write.

    A failed refresh fails the write like any database error (retried, the batch unacked).
    """

    def __init__(self, db: DatabaseManager, pricing: PricingCache) -> None:
        self._pricing = pricing
        self._writer = BatchWriter(db, pricing.get)

    async def write(self, batch: Batch) -> WriteResult:
        """Refresh prices if due, then commit the batch (see ``BatchWriter.write``)."""
        await self._pricing.refresh_if_due()
        return await self._writer.write(batch)


class UnpricedLog:
    """One warning per unpriced (provider, model) per interval, with the events since the last."""

    def __init__(self, interval_s: float, max_models: int = 10_000) -> None:
        self._interval_s = interval_s
        self._max_models = max_models
        self._last: dict[tuple[str, str], float] = {}
        self._pending: Counter[tuple[str, str, str]] = Counter()

    def report(self, unpriced: Iterable[tuple[str, str, str]]) -> None:
        """Count the batch's unpriced events; log the models whose interval has passed."""
        if len(self._pending) >= self._max_models:
            self._pending.clear()  # bounded memory; the metric still counts every event
        self._pending.update(unpriced)
        now = time.monotonic()
        for (provider, model, reason), events in list(self._pending.items()):
            last = self._last.get((provider, model))
            if last is not None and now - last < self._interval_s:
                continue
            if len(self._last) >= self._max_models:
                self._last.clear()
            self._last[(provider, model)] = now
            del self._pending[(provider, model, reason)]
            log.warning(
                "pricing.unpriced_model",
                extra={"provider": provider, "model": model, "reason": reason, "events": events},
            )
