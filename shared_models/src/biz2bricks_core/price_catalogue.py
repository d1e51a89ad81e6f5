"""The price catalogue: every model genai-prices knows, as ``model_pricing`` rows.

``catalogue_rows`` turns the genai-prices data into rows (one per model, price variant, price
version and long-context tier), plus the reviewed operator supplements of
``price_supplements`` for what genai-prices lacks; ``scripts/refresh_pricing_seed.py``
writes them to a data file that is reviewed in git, and a migration applies that file with
``sync_catalogue``.

Rows are never changed in place, so an event's cost stays reproducible from the row its
``pricing_id`` names: a price that changed gets a new row and the old one is retired
(``retired_at``), and a model that left the catalogue is retired too. Operator rows
(``origin = 'operator'``) are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from biz2bricks_core.price_supplements import with_supplements
from biz2bricks_core.pricing import STANDARD, VARIANT_KEYS, price_variant

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["PRICE_COLUMNS", "catalogue_rows", "load_rows", "sync_catalogue"]

# A model's first price version applies to every earlier call, as genai-prices applies it.
EPOCH: Final = datetime(2023, 1, 1, tzinfo=UTC)
PRICE_COLUMNS: Final = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "per_request_usd",
    "web_search_per_k_usd",
)
# genai-prices price key -> model_pricing column.
_PRICE_KEYS: Final = {
    "input_mtok": "input_per_mtok",
    "output_mtok": "output_per_mtok",
    "cache_read_mtok": "cache_read_per_mtok",
    "cache_write_mtok": "cache_write_per_mtok",
    "cache_write_1h_mtok": "cache_write_1h_per_mtok",
}
_KEY_COLUMNS: Final = (
    "provider",
    "model",
    "effective_from",
    "above_input_tokens",
    "daily_from_minute",
    "daily_until_minute",
    "variant",
)


def _tier_price(value: Any, above: int) -> Decimal | None:
    """The price of a key for calls whose input exceeds ``above`` (the tier they fall in)."""
    from genai_prices.types import TieredPrices

    if value is None or not isinstance(value, TieredPrices):
        return value  # type: ignore[no-any-return,unused-ignore]
    price: Decimal = value.base
    for tier in value.tiers:
        if above >= tier.start:
            price = tier.price
    return price


def _version_rows(
    provider: str,
    model: str,
    start: datetime,
    prices: Any,
    source: str,
    daily: tuple[int, int] = (0, 24 * 60),
    variant: str = STANDARD,
) -> list[dict[str, Any]]:
    from genai_prices.types import TieredPrices

    values = {column: getattr(prices, key, None) for key, column in _PRICE_KEYS.items()}
    if values["input_per_mtok"] is None and values["output_per_mtok"] is None:
        return []  # not priced per token (audio hours, pages, searches): no row, no cost
    thresholds = sorted(
        {0} | {t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )
    rows = []
    for above in thresholds:
        row: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "effective_from": start.isoformat(),
            "above_input_tokens": above,
            "daily_from_minute": daily[0],
            "daily_until_minute": daily[1],
            "variant": variant,
        }
        for column, value in values.items():
            price = _tier_price(value, above)
            # A model without an input or output price charges nothing for it (embeddings).
            if price is None and column in ("input_per_mtok", "output_per_mtok"):
                price = Decimal(0)
            row[column] = None if price is None else str(price)
        requests = getattr(prices, "requests_kcount", None)
        row["per_request_usd"] = None if requests is None else str(Decimal(requests) / 1000)
        searches = getattr(prices, "web_searches_kcount", None)
        row["web_search_per_k_usd"] = None if searches is None else str(searches)
        row["source"] = source
        rows.append(row)
    return rows


def catalogue_rows(snapshot: DataSnapshot | None = None) -> list[dict[str, Any]]:
    """Rows for every token-priced model of every provider, each price variant, price version
    and tier, then the operator supplements (``price_supplements.SUPPLEMENTS``).

    Time-of-day prices (DeepSeek's) become rows with a daily window. Each price variant whose
    context the event carries (``pricing.VARIANT_KEYS``: batch processing, service tiers,
    speed, route) becomes rows of its own, resolved as genai-prices resolves them.
    """
    from genai_prices import __version__, data_snapshot

    snapshot = snapshot if snapshot is not None else data_snapshot.get_snapshot()
    source = f"genai-prices {__version__}"
    rows: list[dict[str, Any]] = []
    for provider in snapshot.providers:
        for model in provider.models:
            rows += _standard_rows(provider.id, model, source)
            rows += _variant_rows(provider.id, model, source)
    return with_supplements(rows)


def _standard_rows(provider: str, model: Any, source: str) -> list[dict[str, Any]]:
    from genai_prices import types

    versions = model.prices if isinstance(model.prices, list) else None
    if versions is None:
        return _version_rows(provider, model.id, EPOCH, model.prices, source)
    rows: list[dict[str, Any]] = []
    previous = EPOCH
    for index, version in enumerate(versions):
        constraint = version.constraint
        if isinstance(constraint, types.TimeOfDateConstraint):
            # Active at its hours whatever the date, over every earlier version.
            daily = (_minute(constraint.start_time), _minute(constraint.end_time))
            rows += _version_rows(provider, model.id, EPOCH, version.prices, source, daily)
            continue
        start = EPOCH
        if index > 0 and isinstance(constraint, types.StartDateConstraint):
            start = _midnight(constraint.start_date)
        if start < previous:
            raise ValueError(f"{provider}/{model.id}: price versions out of order")
        previous = start
        rows += _version_rows(provider, model.id, start, version.prices, source)
    return rows


def _variant_rows(provider: str, model: Any, source: str) -> list[dict[str, Any]]:
    """Rows of each price context the model has variants for, from the day the first
    variant of that context applies: one version per day the standard prices or the
    context's variants change, each resolved by genai-prices itself (``get_prices``)."""
    from genai_prices import types

    standard = model.prices if isinstance(model.prices, list) else []
    if any(isinstance(v.constraint, types.TimeOfDateConstraint) for v in standard):
        return []  # no time-of-day model has variants; refuse to guess how they combine
    standard_starts = {EPOCH} | {
        _midnight(v.constraint.start_date)
        for v in standard[1:]
        if isinstance(v.constraint, types.StartDateConstraint)
    }
    contexts: dict[str, tuple[dict[str, str], list[Any]]] = {}
    for variant in model.price_variants or ():
        if not set(variant.when) <= set(VARIANT_KEYS):
            continue  # a context the event does not carry (perplexity's search_type)
        key = price_variant(**variant.when)
        if key != STANDARD:
            contexts.setdefault(key, (variant.when, []))[1].append(variant)
    rows: list[dict[str, Any]] = []
    for key, (when, variants) in contexts.items():
        if any(isinstance(v.constraint, types.TimeOfDateConstraint) for v in variants):
            continue
        starts = {
            EPOCH if v.constraint is None else _midnight(v.constraint.start_date) for v in variants
        }
        first = min(starts)
        previous: Any = None
        for start in sorted(starts | {s for s in standard_starts if s > first}):
            prices = model.get_prices(start, dict(when))
            if prices == previous:
                continue
            previous = prices
            rows += _version_rows(provider, model.id, start, prices, source, variant=key)
    return rows


def _minute(at: time) -> int:
    """Minute of the UTC day (genai-prices' times of day are whole minutes)."""
    utc = at if at.tzinfo is None else datetime.combine(date(1970, 1, 1), at).astimezone(UTC)
    if utc.second or utc.microsecond:
        raise ValueError(f"time of day {at} is not a whole minute")
    return utc.hour * 60 + utc.minute


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """A catalogue data file, with typed values (a file older than a column lacks it)."""
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    for row in rows:
        row["effective_from"] = datetime.fromisoformat(row["effective_from"])
        for column in PRICE_COLUMNS:
            if column in row:
                row[column] = None if row[column] is None else Decimal(row[column])
    return rows


def _pricing_table(columns: Iterable[str]) -> sa.TableClause:
    """model_pricing with the given key and price columns: a migration applies a data file
    against the schema of its own revision, which may predate later columns."""
    return sa.table(
        "model_pricing",
        sa.column("id", sa.Integer),
        *(sa.column(c) for c in columns),
        sa.column("source", sa.String),
        sa.column("origin", sa.String),
        sa.column("retired_at", sa.DateTime(timezone=True)),
    )


def sync_catalogue(conn: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Make the live catalogue rows equal ``rows``: insert new, retire changed and gone ones."""
    rows = list(rows)
    sample = rows[0] if rows else dict.fromkeys((*_KEY_COLUMNS, *PRICE_COLUMNS))
    keys = tuple(c for c in _KEY_COLUMNS if c in sample)
    prices = tuple(c for c in PRICE_COLUMNS if c in sample)
    table = _pricing_table((*keys, *prices))

    def price_values(row: Mapping[str, Any] | sa.RowMapping) -> tuple[Decimal | None, ...]:
        return tuple(None if row[c] is None else Decimal(row[c]).normalize() for c in prices)

    live = {
        tuple(r[c] for c in keys): (r["id"], price_values(r))
        for r in conn.execute(
            sa.select(table).where(table.c.origin == "catalogue", table.c.retired_at.is_(None))
        ).mappings()
    }
    now = datetime.now(UTC)
    inserts: list[dict[str, Any]] = []
    retire: list[int] = []
    wanted = set()
    for row in rows:
        key = tuple(row[c] for c in keys)
        wanted.add(key)
        current = live.get(key)
        if current is not None and current[1] == price_values(row):
            continue
        if current is not None:
            retire.append(current[0])
        inserts.append({c: row[c] for c in (*keys, *prices, "source")})
    retire += [id_ for key, (id_, _) in live.items() if key not in wanted]
    if retire:
        conn.execute(sa.update(table).where(table.c.id.in_(retire)).values(retired_at=now))
    if inserts:
        conn.execute(sa.insert(table).values(origin="catalogue"), inserts)
    return {"inserted": len(inserts), "retired": len(retire), "kept": len(live) - len(retire)}
