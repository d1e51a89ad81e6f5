"""Cost of an LLM call from one ``model_pricing`` row: the arithmetic and the tier choice.

This module is the one home of these rules. ``event_cost`` is the Python arithmetic and
``cost_sql`` its SQL twin, which the consumer's writer and the reprice command run in the
database; ``tests/core/test_pricing_sql.py`` runs both on the same cases. ``unpriced_reason``
(why an event has no cost) has its twin too (tests/core/test_billing_rules_sql.py). The tier
(``choose_tier``) and the row in force are chosen in Python only (``PriceBook.lookup``): the
SQL receives the chosen row's id and never chooses one.

How a call is billed, as the providers bill it and as ``genai-prices`` computes it:

- ``input_tokens`` includes cache reads and cache writes, and ``cache_write_tokens`` includes
  ``cache_write_1h_tokens``. Each part is charged at its own price when the row has one;
  a part without its own price stays inside its parent (a cache read of a model without a
  cache-read price costs the input price; a 1-hour write without a 1-hour price costs the
  cache-write price).
- Long-context tiers are separate rows of the same model and version: a row applies when the
  call's ``input_tokens`` exceed its ``above_input_tokens`` (0 for the base tier), and the
  chosen tier prices every token of the call ("cliff" pricing, as Anthropic, Google and
  OpenAI bill).
- ``per_request_usd`` is a flat fee per call, for the few models priced that way;
  ``web_search_per_k_usd`` is the fee per 1,000 web-search requests the call made.
- The call's price context (``price_variant``: batch processing, a service tier, a speed, a
  region or route) selects rows of its own: a variant row carries the whole price of the
  call in that context, with the same history and tiers as the standard rows. A call in a
  context the book has no row for is unpriced (``unknown_variant``), never priced as the
  standard call; so is a call with web searches whose row has no web-search price.
- A time-of-day row (DeepSeek's peak and off-peak prices) applies to calls whose UTC time of
  day lies in ``[daily_from_minute, daily_until_minute)`` (wrapping past midnight when from >
  until) and wins over the model's all-day rows, as genai-prices applies it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from functools import lru_cache
from typing import Final, Literal, NamedTuple

__all__ = [
    "CATALOGUE",
    "OPERATOR",
    "PriceBook",
    "PriceLookup",
    "TokenPrice",
    "choose_tier",
    "cost_sql",
    "event_cost",
    "price_variant",
    "unpriced_reason",
    "unpriced_reason_sql",
    "variant_fields",
]

ONE_MILLION: Final = Decimal(1_000_000)
ZERO: Final = Decimal(0)
# Stored costs are numeric(24, 12): the Python twin rounds to the same scale.
COST_QUANTUM: Final = Decimal("1e-12")
# Exact products of 18-decimal prices and token counts; numeric rounds half away from zero.
_EXACT: Final = Context(prec=60, rounding=ROUND_HALF_UP)

MINUTES_PER_DAY: Final = 24 * 60
MAX_CACHED_NAMES: Final = 100_000
CATALOGUE: Final = "catalogue"
OPERATOR: Final = "operator"
Origin = Literal["catalogue", "operator"]

# Why an event has no cost (usage_events.unpriced_reason).
UNKNOWN_PROVIDER: Final = "unknown_provider"
UNKNOWN_MODEL: Final = "unknown_model"
NO_PRICE_ROW: Final = "no_price_row"
NOT_YET_PRICED: Final = "no_price_at_time"
UNKNOWN_VARIANT: Final = "unknown_variant"
NO_TOOL_PRICE: Final = "no_tool_price"

# The price-context keys an event carries, in the order of its variant string, with the
# values that name the standard price (providers report them; they select no variant).
VARIANT_KEYS: Final = ("processing", "service_tier", "speed", "route")
STANDARD_VALUES: Final[dict[str, frozenset[str]]] = {
    "processing": frozenset({"standard", "sync", "realtime"}),
    "service_tier": frozenset({"default", "standard", "auto", "on_demand"}),
    "speed": frozenset({"standard", "normal"}),
    # Anthropic names "not_available" where a model has no geo routing (standard price).
    "route": frozenset({"global", "not_available"}),
}
STANDARD: Final = ""


def price_variant(
    processing: str | None = None,
    service_tier: str | None = None,
    speed: str | None = None,
    route: str | None = None,
) -> str:
    """The variant string of a call's price context: ``""`` for the standard price, else its
    non-standard ``key=value`` pairs joined by ``;`` in VARIANT_KEYS order (``processing=batch``,
    ``service_tier=flex;speed=fast``). Catalogue rows and events are both keyed by it."""
    if processing is None and service_tier is None and speed is None and route is None:
        return STANDARD  # most calls: no context (the writer asks once per event)
    return _composed_variant(processing, service_tier, speed, route)


# A service sends a handful of contexts: composing one each time cost the writer 0.4 ms a
# batch of 1,000 where two in five events carried one.
@lru_cache(maxsize=4096)
def _composed_variant(
    processing: str | None, service_tier: str | None, speed: str | None, route: str | None
) -> str:
    parts = []
    for key, value in zip(VARIANT_KEYS, (processing, service_tier, speed, route), strict=True):
        # Providers spell these in lower case; a caller's "Batch" or "Default" means the same.
        if value is not None and (value := value.lower()) not in STANDARD_VALUES[key]:
            parts.append(f"{key}={value}")
    return ";".join(parts)


def variant_fields(variant: str) -> dict[str, str]:
    """The price-context fields a variant string was made of (``price_variant``'s inverse)."""
    if not variant:
        return {}
    return dict(part.split("=", 1) for part in variant.split(";"))


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """One ``model_pricing`` row: USD per million tokens of one model, version and tier."""

    provider: str
    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    per_request_usd: Decimal | None = None
    web_search_per_k_usd: Decimal | None = None
    above_input_tokens: int = 0
    origin: Origin = CATALOGUE
    id: int | None = None
    daily_from_minute: int = 0
    daily_until_minute: int = MINUTES_PER_DAY
    variant: str = STANDARD

    @property
    def all_day(self) -> bool:
        """False for a time-of-day price."""
        return (self.daily_from_minute, self.daily_until_minute) == (0, MINUTES_PER_DAY)

    def in_force_at_minute(self, minute: int) -> bool:
        """Whether a call at this UTC minute of the day falls in the row's daily window."""
        start, end = self.daily_from_minute, self.daily_until_minute
        return start <= minute < end if start < end else minute >= start or minute < end


def event_cost(
    price: TokenPrice,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    web_search_requests: int = 0,
) -> Decimal:
    """USD cost of one call priced by ``price``, rounded as the database stores it."""
    if cache_read_tokens + cache_write_tokens > input_tokens:
        raise ValueError("cache_read_tokens + cache_write_tokens exceed input_tokens")
    if cache_write_1h_tokens > cache_write_tokens:
        raise ValueError("cache_write_1h_tokens exceed cache_write_tokens")
    read, write, write_1h = (
        price.cache_read_per_mtok,
        price.cache_write_per_mtok,
        price.cache_write_1h_per_mtok,
    )
    uncached = input_tokens - (0 if read is None else cache_read_tokens)
    if write is not None:
        uncached -= cache_write_tokens
    elif write_1h is not None:
        uncached -= cache_write_1h_tokens
    write_5m = cache_write_tokens - (0 if write_1h is None else cache_write_1h_tokens)
    with localcontext(_EXACT):
        total = (
            uncached * price.input_per_mtok
            + cache_read_tokens * (read or ZERO)
            + write_5m * (write or ZERO)
            + cache_write_1h_tokens * (write_1h or ZERO)
            + output_tokens * price.output_per_mtok
            + web_search_requests * (price.web_search_per_k_usd or ZERO) * 1000
        ) / ONE_MILLION + (price.per_request_usd or ZERO)
        return total.quantize(COST_QUANTUM)


def cost_sql(event: str, price: str) -> str:
    """The SQL twin of ``event_cost``: NULL when ``price`` (a model_pricing alias) is NULL.

    ``event`` is an alias with the token columns of usage_events. Both arguments are
    aliases written in code, never input.
    """
    e, p = event, price
    return f"""(
        ({e}.input_tokens
            - CASE WHEN {p}.cache_read_per_mtok IS NULL THEN 0 ELSE {e}.cache_read_tokens END
            - CASE WHEN {p}.cache_write_per_mtok IS NOT NULL THEN {e}.cache_write_tokens
                   WHEN {p}.cache_write_1h_per_mtok IS NOT NULL THEN {e}.cache_write_1h_tokens
                   ELSE 0 END) * {p}.input_per_mtok
        + {e}.cache_read_tokens * coalesce({p}.cache_read_per_mtok, 0)
        + ({e}.cache_write_tokens - CASE WHEN {p}.cache_write_1h_per_mtok IS NULL THEN 0
                                         ELSE {e}.cache_write_1h_tokens END)
            * coalesce({p}.cache_write_per_mtok, 0)
        + {e}.cache_write_1h_tokens * coalesce({p}.cache_write_1h_per_mtok, 0)
        + {e}.output_tokens * {p}.output_per_mtok
        + {e}.web_search_requests * coalesce({p}.web_search_per_k_usd, 0) * 1000
    ) / 1000000 + coalesce({p}.per_request_usd, 0)"""


def unpriced_reason(pricing_id: int | None, reason: str | None) -> str | None:
    """Why a stored event has no cost: None when a price row priced it, else the reason the
    lookup gave (``no_price_row`` when it gave none)."""
    return None if pricing_id is not None else (reason or NO_PRICE_ROW)


def unpriced_reason_sql(pricing_id: str, reason: str) -> str:
    """SQL twin of ``unpriced_reason``."""
    return f"CASE WHEN {pricing_id} IS NULL THEN coalesce({reason}, '{NO_PRICE_ROW}') END"


def choose_tier(tiers: list[TokenPrice], input_tokens: int) -> TokenPrice:
    """The tier a call falls in: the highest ``above_input_tokens`` its input exceeds.

    ``tiers`` are the rows of one version sorted by ``above_input_tokens``, the first being
    the base tier (0), which also prices a call that exceeds no threshold.
    """
    chosen = tiers[0]
    for tier in tiers[1:]:
        if input_tokens > tier.above_input_tokens:
            chosen = tier
    return chosen


Key = tuple[str, str]
# Maps an event's (provider, model) strings to the catalogue key it names, or to the reason
# why it names none (biz2bricks_core.model_names.ModelNames is the genai-prices one).
Resolver = Callable[[str, str], "Key | str"]


class PriceLookup(NamedTuple):
    """The row that prices a call, or None and the reason why none does."""

    price: TokenPrice | None
    reason: str | None = None


@dataclass
class _Versions:
    starts: list[datetime] = field(default_factory=list)
    tiers: list[list[TokenPrice]] = field(default_factory=list)
    daily: list[list[TokenPrice]] = field(default_factory=list)
    # Most models have one version, one tier and no daily window: one comparison then.
    only: TokenPrice | None = None

    def at(self, when: datetime, input_tokens: int) -> TokenPrice | None:
        only = self.only
        if only is not None:
            return only if only.effective_from <= when else None
        if self.daily:
            utc = when.astimezone(UTC)
            minute = utc.hour * 60 + utc.minute
            for tiers in self.daily:
                first = tiers[0]
                if first.effective_from <= when and first.in_force_at_minute(minute):
                    return choose_tier(tiers, input_tokens)
        index = bisect.bisect_right(self.starts, when) - 1
        return choose_tier(self.tiers[index], input_tokens) if index >= 0 else None


# A key's price histories, one per variant ("" the standard one).
Variants = dict[str, _Versions]


def _index(prices: Iterable[TokenPrice]) -> dict[Key, Variants]:
    grouped: dict[tuple[str, str, str], dict[tuple[datetime, int, int], list[TokenPrice]]] = {}
    for p in prices:
        versions = grouped.setdefault((p.provider.lower(), p.model.lower(), p.variant), {})
        version = (p.effective_from, p.daily_from_minute, p.daily_until_minute)
        versions.setdefault(version, []).append(p)
    index: dict[Key, Variants] = {}
    for (provider, model, variant), versions in grouped.items():
        entry = index.setdefault((provider, model), {})[variant] = _Versions()
        for version in sorted(versions):
            tiers = sorted(versions[version], key=lambda p: p.above_input_tokens)
            if tiers[0].all_day:
                entry.starts.append(version[0])
                entry.tiers.append(tiers)
            else:
                entry.daily.append(tiers)
        if len(entry.tiers) == 1 and len(entry.tiers[0]) == 1 and not entry.daily:
            entry.only = entry.tiers[0][0]
    return index


@dataclass
class PriceBook:
    """All live price rows, looked up by an event's provider and model strings, time and size.

    Operator rows (negotiated prices, fine-tuned models) win over catalogue rows: first an
    operator row for the strings as sent (lower-cased), then the catalogue key the resolver
    names, operator row before catalogue row. Without a resolver only exact keys match.
    """

    resolver: Resolver | None = None
    _operator: dict[Key, Variants] = field(default_factory=dict)
    _catalogue: dict[Key, Variants] = field(default_factory=dict)
    _chains: dict[Key, tuple[list[Variants], str | None]] = field(default_factory=dict)
    _size: int = 0

    @classmethod
    def from_prices(
        cls, prices: Iterable[TokenPrice], resolver: Resolver | None = None
    ) -> PriceBook:
        """Index price rows by origin, key, version start and tier."""
        rows = list(prices)
        book = cls(resolver=resolver, _size=len(rows))
        book._operator = _index(p for p in rows if p.origin == OPERATOR)
        book._catalogue = _index(p for p in rows if p.origin != OPERATOR)
        return book

    def __len__(self) -> int:
        return self._size

    def _chain(self, provider: str, model: str) -> tuple[list[Variants], str | None]:
        """The price histories to try in order, and the reason to give when none has a price.

        Resolved once per (provider, model) strings and book: the write path then does one
        dict lookup per event.
        """
        if len(self._chains) >= MAX_CACHED_NAMES:
            self._chains.clear()  # bounded memory under endlessly new names
        as_sent = (provider.strip().lower(), model.strip().lower())
        keys = [as_sent] if as_sent in self._operator else []
        reason: str | None = UNKNOWN_MODEL
        if self.resolver is None:
            if as_sent in self._catalogue:
                keys.append(as_sent)
        else:
            resolved = self.resolver(provider, model)
            if isinstance(resolved, str):
                reason = resolved
            else:
                resolved = (resolved[0].lower(), resolved[1].lower())
                keys.append(resolved)
                known = resolved in self._operator or resolved in self._catalogue
                reason = NOT_YET_PRICED if known else NO_PRICE_ROW
        chain = [
            versions
            for key in keys
            for origin in (self._operator, self._catalogue)
            if (versions := origin.get(key)) is not None
        ]
        self._chains[(provider, model)] = result = (chain, reason)
        return result

    def lookup(
        self,
        provider: str,
        model: str,
        at: datetime,
        input_tokens: int = 0,
        variant: str = STANDARD,
        web_search_requests: int = 0,
    ) -> PriceLookup:
        """The row pricing a call of ``model`` at ``at`` with ``input_tokens`` in the price
        context ``variant`` (``price_variant``), or why none does."""
        chain, reason = self._chains.get((provider, model)) or self._chain(provider, model)
        variant_known = False
        for variants in chain:
            versions = variants.get(variant)
            if versions is None:
                continue
            variant_known = True
            price = versions.at(at, input_tokens)
            if price is not None:
                if web_search_requests and price.web_search_per_k_usd is None:
                    return PriceLookup(None, NO_TOOL_PRICE)
                return PriceLookup(price)
        if chain and not variant_known:
            return PriceLookup(None, UNKNOWN_VARIANT)
        if variant_known and variant != STANDARD:
            # Before the variant's first price the model has a standard price but not this
            # context's: the context is what is unknown at that time (as the README says).
            for variants in chain:
                standard = variants.get(STANDARD)
                if standard is not None and standard.at(at, input_tokens) is not None:
                    return PriceLookup(None, UNKNOWN_VARIANT)
        return PriceLookup(None, reason)
