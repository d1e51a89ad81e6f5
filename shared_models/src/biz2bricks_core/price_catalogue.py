"""The price catalogue: every model genai-prices knows, as ``model_pricing`` rows.

``catalogue_rows`` turns the genai-prices data into rows (one per model, price version and
long-context tier); ``scripts/refresh_pricing_seed.py`` writes them to a data file that is
reviewed in git, and a migration applies that file with ``sync_catalogue``.

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
) -> list[dict[str, Any]]:
    from genai_prices.types import TieredPrices

    values = {column: getattr(prices, key, None) for key, column in _PRICE_KEYS.items()}
    if values["input_per_mtok"] is None and values["output_per_mtok"] is None:
        return []  # not priced per token (audio hours, pages, searches): no row, no cost
    requests = getattr(prices, "requests_kcount", None)
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
        }
        for column, value in values.items():
            price = _tier_price(value, above)
            # A model without an input or output price charges nothing for it (embeddings).
            if price is None and column in ("input_per_mtok", "output_per_mtok"):
                price = Decimal(0)
            row[column] = None if price is None else str(price)
        row["per_request_usd"] = None if requests is None else str(Decimal(requests) / 1000)
        row["source"] = source
        rows.append(row)
    return rows


def catalogue_rows(snapshot: DataSnapshot | None = None) -> list[dict[str, Any]]:
    """Rows for every token-priced model of every provider, each price version and tier.

    Time-of-day prices (DeepSeek's) become rows with a daily window. Request-context variants
    (service tiers such as flex or priority) are not kept: the event does not carry the tier.
    """
    from genai_prices import __version__, data_snapshot, types

    snapshot = snapshot if snapshot is not None else data_snapshot.get_snapshot()
    source = f"genai-prices {__version__}"
    rows: list[dict[str, Any]] = []
    for provider in snapshot.providers:
        for model in provider.models:
            versions = model.prices if isinstance(model.prices, list) else None
            if versions is None:
                rows += _version_rows(provider.id, model.id, EPOCH, model.prices, source)
                continue
            previous = EPOCH
            for index, version in enumerate(versions):
                constraint = version.constraint
                if isinstance(constraint, types.TimeOfDateConstraint):
                    # Active at its hours whatever the date, over every earlier version.
                    daily = (_minute(constraint.start_time), _minute(constraint.end_time))
                    rows += _version_rows(
                        provider.id, model.id, EPOCH, version.prices, source, daily
                    )
                    continue
                start = EPOCH
                if index > 0 and isinstance(constraint, types.StartDateConstraint):
                    start = _midnight(constraint.start_date)
                if start < previous:
                    raise ValueError(f"{provider.id}/{model.id}: price versions out of order")
                previous = start
                rows += _version_rows(provider.id, model.id, start, version.prices, source)
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
    """A catalogue data file, with typed values."""
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    for row in rows:
        row["effective_from"] = datetime.fromisoformat(row["effective_from"])
        for column in PRICE_COLUMNS:
            row[column] = None if row[column] is None else Decimal(row[column])
    return rows


_pricing = sa.table(
    "model_pricing",
    sa.column("id", sa.Integer),
    sa.column("provider", sa.String),
    sa.column("model", sa.String),
    sa.column("effective_from", sa.DateTime(timezone=True)),
    sa.column("above_input_tokens", sa.BigInteger),
    sa.column("daily_from_minute", sa.SmallInteger),
    sa.column("daily_until_minute", sa.SmallInteger),
    *(sa.column(c, sa.Numeric) for c in PRICE_COLUMNS),
    sa.column("source", sa.String),
    sa.column("origin", sa.String),
    sa.column("retired_at", sa.DateTime(timezone=True)),
)


def _prices(row: Mapping[str, Any] | sa.RowMapping) -> tuple[Decimal | None, ...]:
    return tuple(None if row[c] is None else Decimal(row[c]).normalize() for c in PRICE_COLUMNS)


def sync_catalogue(conn: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Make the live catalogue rows equal ``rows``: insert new, retire changed and gone ones."""
    live = {
        tuple(r[c] for c in _KEY_COLUMNS): (r["id"], _prices(r))
        for r in conn.execute(
            sa.select(_pricing).where(
                _pricing.c.origin == "catalogue", _pricing.c.retired_at.is_(None)
            )
        ).mappings()
    }
    now = datetime.now(UTC)
    inserts: list[dict[str, Any]] = []
    retire: list[int] = []
    wanted = set()
    for row in rows:
        key = tuple(row[c] for c in _KEY_COLUMNS)
        wanted.add(key)
        current = live.get(key)
        if current is not None and current[1] == _prices(row):
            continue
        if current is not None:
            retire.append(current[0])
        inserts.append({**{c: row[c] for c in (*_KEY_COLUMNS, *PRICE_COLUMNS, "source")}})
    retire += [id_ for key, (id_, _) in live.items() if key not in wanted]
    if retire:
        conn.execute(sa.update(_pricing).where(_pricing.c.id.in_(retire)).values(retired_at=now))
    if inserts:
        conn.execute(sa.insert(_pricing).values(origin="catalogue"), inserts)
    return {"inserted": len(inserts), "retired": len(retire), "kept": len(live) - len(retire)}
