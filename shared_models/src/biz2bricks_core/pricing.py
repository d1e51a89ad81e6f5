"""Cost of an LLM call from versioned per-model prices, in Decimal (never float)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final

__all__ = ["PriceBook", "TokenPrice", "event_cost"]

ONE_MILLION: Final = Decimal(1_000_000)
ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """Prices in USD per million tokens of one model, in force from ``effective_from``."""

    provider: str
    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    id: int | None = None


def event_cost(
    price: TokenPrice,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> Decimal:
    """USD cost of one call. ``input_tokens`` includes cache reads and writes.

    A model without a cache price charges its cached tokens at the input price.
    """
    uncached = input_tokens - cache_read_tokens - cache_write_tokens
    if uncached < 0:
        raise ValueError("cache_read_tokens + cache_write_tokens exceed input_tokens")
    read_price = price.cache_read_per_mtok
    write_price = price.cache_write_per_mtok
    total = (
        uncached * price.input_per_mtok
        + cache_read_tokens * (price.input_per_mtok if read_price is None else read_price)
        + cache_write_tokens * (price.input_per_mtok if write_price is None else write_price)
        + output_tokens * price.output_per_mtok
    )
    return total / ONE_MILLION


@dataclass
class PriceBook:
    """All price versions, looked up by provider, model and the time of the call."""

    _by_model: dict[tuple[str, str], list[TokenPrice]] = field(default_factory=dict)
    _starts: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)
    _lookup_cache: dict[tuple[str, str], tuple[str, str] | None] = field(default_factory=dict)

    @classmethod
    def from_prices(cls, prices: Iterable[TokenPrice]) -> PriceBook:
        """Index price rows by (provider, model), each list sorted by effective_from."""
        book = cls()
        for price in prices:
            book._by_model.setdefault((price.provider, price.model), []).append(price)
        for versions in book._by_model.values():
            versions.sort(key=lambda p: p.effective_from)
        book._starts = {key: [v.effective_from for v in vs] for key, vs in book._by_model.items()}
        return book

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_model.values())

    def _resolve(self, provider: str, model: str) -> tuple[str, str] | None:
        """The priced model an event's model string refers to.

        An exact name wins; otherwise the longest priced name that the event's model extends
        with ``-`` (``gpt-4o-2024-08-06`` is priced as ``gpt-4o``).
        """
        key = (provider, model)
        if key in self._lookup_cache:
            return self._lookup_cache[key]
        found: tuple[str, str] | None = key if key in self._by_model else None
        if found is None:
            candidates = [
                known
                for known in self._by_model
                if known[0] == provider and model.startswith(known[1] + "-")
            ]
            found = max(candidates, key=lambda k: len(k[1]), default=None)
        self._lookup_cache[key] = found
        return found

    def price_at(self, provider: str, model: str, at: datetime) -> TokenPrice | None:
        """The price version in force at ``at``, or None for an unknown model or earlier time."""
        key = self._resolve(provider, model)
        if key is None:
            return None
        index = bisect.bisect_right(self._starts[key], at) - 1
        return self._by_model[key][index] if index >= 0 else None
