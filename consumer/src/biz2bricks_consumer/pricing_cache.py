"""An in-memory PriceBook of ``model_pricing``, refreshed in the background."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.models import ModelPricingModel
from biz2bricks_core.pricing import PriceBook, TokenPrice

log = logging.getLogger(__name__)


async def load_price_book(db: DatabaseManager) -> PriceBook:
    """Every price version in the database."""
    async with db.session() as session:
        rows = (await session.scalars(select(ModelPricingModel))).all()
    return PriceBook.from_prices(
        TokenPrice(
            provider=r.provider,
            model=r.model,
            effective_from=r.effective_from,
            input_per_mtok=r.input_per_mtok,
            output_per_mtok=r.output_per_mtok,
            cache_read_per_mtok=r.cache_read_per_mtok,
            cache_write_per_mtok=r.cache_write_per_mtok,
            id=r.id,
        )
        for r in rows
    )


class PricingCache:
    """Holds the current PriceBook; ``get`` never does I/O, ``refresh_if_due`` does."""

    def __init__(self, db: DatabaseManager, refresh_s: float) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._book = PriceBook()
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
            self._book = await load_price_book(self._db)
            self._loaded_at = time.monotonic()
            log.info("pricing.refreshed", extra={"versions": len(self._book)})
