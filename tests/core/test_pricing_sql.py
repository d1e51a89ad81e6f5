"""The writer's SQL cost and the Python twin (biz2bricks_core.pricing) agree on every case."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text

from biz2bricks_core import DatabaseManager
from biz2bricks_core.pricing import TokenPrice, cost_sql, event_cost

T0 = datetime(2024, 1, 1, tzinfo=UTC)
D = Decimal
PRICES = [
    TokenPrice("p", "plain", T0, D(3), D(15)),
    TokenPrice("p", "read", T0, D("2.5"), D(10), cache_read_per_mtok=D("1.25")),
    TokenPrice("p", "write", T0, D(3), D(15), D("0.3"), D("3.75")),
    TokenPrice("p", "write-1h", T0, D(3), D(15), D("0.3"), D("3.75"), D(6)),
    TokenPrice("p", "1h-only", T0, D(1), D(2), None, None, D(4)),
    TokenPrice("p", "request", T0, D(1), D(1), per_request_usd=D("0.012")),
    TokenPrice("p", "thirds", T0, D("0.333333333333333333"), D("0.041666666666666664")),
    TokenPrice("p", "embedding", T0, D("0.02"), D(0)),
    TokenPrice("p", "web-search", T0, D(3), D(15), D("0.3"), web_search_per_k_usd=D(10)),
    TokenPrice("p", "search-odd", T0, D(1), D(2), web_search_per_k_usd=D("0.333333333333333333")),
]
# input, output, cache read, cache write, 1-hour cache write, web-search requests
TOKENS = [
    (0, 0, 0, 0, 0, 0),
    (1, 1, 0, 0, 0, 0),
    (1_234, 567, 0, 0, 0, 0),
    (20_000, 800, 15_000, 0, 0, 0),
    (30_000, 1_000, 4_000, 12_000, 5_000, 0),
    (30_000, 1_000, 0, 30_000, 30_000, 0),
    (100_000_000, 100_000_000, 50_000_000, 50_000_000, 1, 0),
    (2_000, 300, 0, 0, 0, 1),
    (2_000, 300, 1_000, 0, 0, 7),
    (100_000_000, 100_000_000, 0, 0, 0, 100_000_000),
]


async def test_sql_cost_equals_python_cost_on_every_row_shape_and_token_mix(
    db: DatabaseManager,
) -> None:
    statement = text(
        "SELECT " + cost_sql("e", "p") + " FROM (SELECT CAST(:inp AS bigint) AS input_tokens,"
        " CAST(:out AS bigint) AS output_tokens, CAST(:read AS bigint) AS cache_read_tokens,"
        " CAST(:write AS bigint) AS cache_write_tokens,"
        " CAST(:write_1h AS bigint) AS cache_write_1h_tokens,"
        " CAST(:searches AS bigint) AS web_search_requests) e,"
        " (SELECT CAST(:input_per_mtok AS numeric(30, 18)) AS input_per_mtok,"
        " CAST(:output_per_mtok AS numeric(30, 18)) AS output_per_mtok,"
        " CAST(:cache_read_per_mtok AS numeric(30, 18)) AS cache_read_per_mtok,"
        " CAST(:cache_write_per_mtok AS numeric(30, 18)) AS cache_write_per_mtok,"
        " CAST(:cache_write_1h_per_mtok AS numeric(30, 18)) AS cache_write_1h_per_mtok,"
        " CAST(:per_request_usd AS numeric(30, 18)) AS per_request_usd,"
        " CAST(:web_search_per_k_usd AS numeric(30, 18)) AS web_search_per_k_usd) p"
    )
    differences = []
    async with db.engine.connect() as conn:
        for price, (inp, out, read, write, write_1h, searches) in itertools.product(PRICES, TOKENS):
            params = {
                "inp": inp,
                "out": out,
                "read": read,
                "write": write,
                "write_1h": write_1h,
                "searches": searches,
                "input_per_mtok": price.input_per_mtok,
                "output_per_mtok": price.output_per_mtok,
                "cache_read_per_mtok": price.cache_read_per_mtok,
                "cache_write_per_mtok": price.cache_write_per_mtok,
                "cache_write_1h_per_mtok": price.cache_write_1h_per_mtok,
                "per_request_usd": price.per_request_usd,
                "web_search_per_k_usd": price.web_search_per_k_usd,
            }
            sql = (await conn.execute(statement, params)).scalar_one()
            stored = sql.quantize(D("1e-12"))  # the column is numeric(24, 12)
            python = event_cost(
                price,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=read,
                cache_write_tokens=write,
                cache_write_1h_tokens=write_1h,
                web_search_requests=searches,
            )
            if stored != python:
                differences.append(
                    f"{price.model} {inp, out, read, write, write_1h, searches}: {sql} {python}"
                )
    assert not differences, "\n".join(differences)


async def test_sql_cost_is_null_without_a_price_row(db: DatabaseManager) -> None:
    statement = text(
        "SELECT "
        + cost_sql("e", "p")
        + " FROM (SELECT 10 AS input_tokens, 5 AS output_tokens, 0 AS cache_read_tokens,"
        " 0 AS cache_write_tokens, 0 AS cache_write_1h_tokens, 0 AS web_search_requests) e"
        " LEFT JOIN model_pricing p ON p.id = -1"
    )
    async with db.engine.connect() as conn:
        assert (await conn.execute(statement)).scalar_one() is None
