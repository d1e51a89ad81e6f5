"""Consumer write path: decoded batches -> committed rows and counters.

The events use the provider and model spellings of tests/pricing/cases.py (aliases, prefixes,
dated ids) and every tenth one a long context, so name resolution and tier choice are in the
measured path.

Compared in one run against (a) raw asyncpg: unnest insert ON CONFLICT DO NOTHING RETURNING
plus one summed counter UPDATE per batch, and (b) one transaction per event with
SELECT .. FOR UPDATE (the original library's pattern). Bar: >= 0.6x (a); the ratio to (b) is
reported only (it depends on the machine's commit latency).
With --holds every event of ours settles a live token hold and the organizations have a token
limit (so the alert statement has thresholds to check): the write path at its fullest. The bar
compares it with (a) as above; a raw baseline that settles the same holds (deletes them and
takes their tokens off the reservations) is run and reported beside it.
Run: uv run python -m bench.consumer_write [--events 100000] [--orgs 1000] [--batch 1000]
    [--holds]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from bench._common import Timer, add_grants, bench_database, events, manager, provision_orgs
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.worker import tune_gc
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import UsageEvent
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.event_ids import NEW_ID_SQL, event_id_month, event_id_month_sql
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core.pricing import PriceBook
from tests.factories import message_for
from tests.pricing.cases import NAMES
from tests.support import libpq_url

# The partition key is part of a correct row: the raw insert computes it as ours does.
ID_MONTH = event_id_month_sql("i.e")
RAW_INSERT = f"""
INSERT INTO usage_events (event_id, organization_id, occurred_at, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, id_month)
SELECT *, {ID_MONTH} FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[],
    $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
    AS i(e, o, t, p, m, it, ot, cr, cw)
ON CONFLICT (event_id, id_month) DO NOTHING
RETURNING organization_id, input_tokens + output_tokens AS tokens
"""
RAW_COUNTERS = """
UPDATE usage_limits u SET tokens_used_period = u.tokens_used_period + d.tokens,
    counters_updated_at = now()
FROM (SELECT unnest($1::uuid[]) AS organization_id, unnest($2::bigint[]) AS tokens) d
WHERE u.organization_id = d.organization_id
"""


# The same job as ours with --holds, written raw: the events' settled holds deleted (only
# those of events this transaction inserted, and only of the event's own organization) and
# their tokens taken off the counters' reservations in the same summed UPDATE.
RAW_INSERT_RETURNING_IDS = RAW_INSERT.replace("RETURNING ", "RETURNING event_id, ")
RAW_SETTLE = """
DELETE FROM usage_token_holds h USING unnest($1::uuid[], $2::uuid[]) AS s(id, o)
WHERE h.id = s.id AND h.organization_id = s.o
RETURNING h.organization_id, h.tokens
"""
RAW_COUNTERS_SETTLING = """
UPDATE usage_limits u SET tokens_used_period = u.tokens_used_period + d.tokens,
    tokens_reserved = greatest(u.tokens_reserved - d.held, 0), counters_updated_at = now()
FROM (SELECT unnest($1::uuid[]) AS organization_id, unnest($2::bigint[]) AS tokens,
    unnest($3::bigint[]) AS held) d
WHERE u.organization_id = d.organization_id
"""


async def with_holds(conn: asyncpg.Connection, items: list[UsageEvent]) -> list[UsageEvent]:
    """The events, each carrying the id of a live hold written for it (untimed set-up)."""
    # The ids the holds' own default makes (time-ordered, as reserve_tokens gets them).
    made = await conn.fetch(f"SELECT {NEW_ID_SQL} FROM generate_series(1, $1)", len(items))
    ids = [uuid.UUID(int=row[0].int) for row in made]  # as decoded from a message: stdlib
    await conn.execute(
        "INSERT INTO usage_token_holds (id, organization_id, tokens, expires_at)"
        " SELECT i, o, 2000, now() + interval '1 hour'"
        " FROM unnest($1::uuid[], $2::uuid[]) AS t(i, o)",
        ids,
        [e.organization_id for e in items],
    )
    await conn.execute(
        "UPDATE usage_limits l SET tokens_reserved = l.tokens_reserved + h.tokens,"
        " holds_next_expiry = least(l.holds_next_expiry, now() + interval '1 hour')"
        " FROM (SELECT o, 2000 * count(*) AS tokens FROM unnest($1::uuid[]) AS o GROUP BY o) h"
        " WHERE l.organization_id = h.o",
        [e.organization_id for e in items],
    )
    return [e.model_copy(update={"reservation_id": i}) for e, i in zip(items, ids, strict=True)]


@dataclass(frozen=True)
class Scene:
    """What every write-path bench sets up: organizations with counters, a manager with the
    catalogue's price book, and a raw connection (the baseline's, and the set-up's)."""

    orgs: list[uuid.UUID]
    db: DatabaseManager
    book: PriceBook
    conn: asyncpg.Connection


async def set_scene(url: str, n_orgs: int, holds: bool, grants: bool = False) -> Scene:
    """The scene; with ``holds`` every organization has a token limit (so the alert statement
    has thresholds to check), with ``grants`` every one is past its plan with 5 grants."""
    orgs = await provision_orgs(url, n_orgs)
    db = manager(url)
    book = await load_price_book(db, ModelNames())
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    if holds:
        await conn.execute("UPDATE usage_limits SET token_limit = 1000000000000")
    if grants:  # every organization is past its plan: each batch burns its grants
        await conn.execute("UPDATE usage_limits SET token_limit = 0")
        await add_grants(conn, orgs, 5, 10**15)
    return Scene(orgs, db, book, conn)


def chunks(items: list[UsageEvent], size: int) -> list[list[UsageEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def realistic(items: list[UsageEvent]) -> list[UsageEvent]:
    """The events with the spellings applications send, some long-context calls, and price
    contexts: a quarter batch, a seventh flex, a ninth with web searches."""
    out = []
    for i, e in enumerate(items):
        provider, model, _, _ = NAMES[i % len(NAMES)]
        update: dict[str, object] = {"provider": provider, "model": model}
        if i % 10 == 0:
            update["input_tokens"] = 250_000 + i % 50_000
        if i % 4 == 1:
            update["processing"] = "batch"
        elif i % 7 == 2:
            update["service_tier"] = "flex"
        if i % 9 == 3:
            update["web_search_requests"] = 2
        out.append(e.model_copy(update=update))
    return out


async def raw_insert(
    conn: asyncpg.Connection, sql: str, batch: list[UsageEvent]
) -> list[asyncpg.Record]:
    """The raw insert of ``batch`` (RAW_INSERT or RAW_INSERT_RETURNING_IDS), as typed arrays."""
    return await conn.fetch(
        sql,
        [e.event_id for e in batch],
        [e.organization_id for e in batch],
        [e.occurred_at for e in batch],
        [e.provider for e in batch],
        [e.model for e in batch],
        [e.input_tokens for e in batch],
        [e.output_tokens for e in batch],
        [e.cache_read_tokens for e in batch],
        [e.cache_write_tokens for e in batch],
    )


async def raw_batches(conn: asyncpg.Connection, batches: list[list[UsageEvent]]) -> None:
    for batch in batches:
        async with conn.transaction():
            rows = await raw_insert(conn, RAW_INSERT, batch)
            sums: dict[uuid.UUID, int] = defaultdict(int)
            for row in rows:
                sums[row["organization_id"]] += row["tokens"]
            orgs = sorted(sums)
            await conn.execute(RAW_COUNTERS, orgs, [sums[o] for o in orgs])


async def raw_settling_batches(conn: asyncpg.Connection, batches: list[list[UsageEvent]]) -> None:
    """The raw baseline doing what ours does with --holds: it also settles each inserted
    event's hold (reported beside the bar's ratio, which is against ``raw_batches``)."""
    for batch in batches:
        async with conn.transaction():
            rows = await raw_insert(conn, RAW_INSERT_RETURNING_IDS, batch)
            holds = {e.event_id: e.reservation_id for e in batch}
            settle = [(holds[r["event_id"]], r["organization_id"]) for r in rows]
            settle = [(h, o) for h, o in settle if h is not None]
            settled = await conn.fetch(RAW_SETTLE, [h for h, _ in settle], [o for _, o in settle])
            sums: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])
            for row in rows:
                sums[row["organization_id"]][0] += row["tokens"]
            for row in settled:
                sums[row["organization_id"]][1] += row["tokens"]
            orgs = sorted(sums)
            await conn.execute(
                RAW_COUNTERS_SETTLING, orgs, [sums[o][0] for o in orgs], [sums[o][1] for o in orgs]
            )


async def per_event(conn: asyncpg.Connection, items: list[UsageEvent]) -> None:
    for e in items:
        async with conn.transaction():
            await conn.fetchrow(
                "SELECT tokens_used_period FROM usage_limits WHERE organization_id = $1 FOR UPDATE",
                e.organization_id,
            )
            await conn.execute(
                "INSERT INTO usage_events (event_id, organization_id, occurred_at, provider,"
                " model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
                " id_month) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                e.event_id,
                e.organization_id,
                e.occurred_at,
                e.provider,
                e.model,
                e.input_tokens,
                e.output_tokens,
                e.cache_read_tokens,
                e.cache_write_tokens,
                event_id_month(e.event_id),
            )
            await conn.execute(
                "UPDATE usage_limits SET tokens_used_period = tokens_used_period + $2"
                " WHERE organization_id = $1",
                e.organization_id,
                e.total_tokens,
            )


async def measure(
    url: str,
    n_events: int,
    n_orgs: int,
    batch_size: int,
    rounds: int,
    holds: bool,
    grants: bool = False,
) -> None:
    scene = await set_scene(url, n_orgs, holds, grants)
    orgs, db, conn = scene.orgs, scene.db, scene.conn
    writer = BatchWriter(db, lambda: scene.book)
    ours_s = raw_s = raw_settling_s = 0.0
    per_round = n_events // rounds
    for r in range(rounds):
        raw_events = chunks(realistic(events(orgs, per_round)), batch_size)
        our_events = realistic(events(orgs, per_round))
        if holds:
            our_events = await with_holds(conn, our_events)
        our_batches = [
            Batch(
                events=c,
                sources=[message_for(e) for e in c],
            )
            for c in chunks(our_events, batch_size)
        ]
        with Timer() as t_raw:
            await raw_batches(conn, raw_events)
        with Timer() as t_ours:
            for batch in our_batches:
                await writer.write(batch)
        raw_s += t_raw.seconds
        ours_s += t_ours.seconds
        if holds:  # after both, so that the bar's two runs are as they were without it
            settling_events = await with_holds(conn, realistic(events(orgs, per_round)))
            with Timer() as t_settling:
                await raw_settling_batches(conn, chunks(settling_events, batch_size))
            raw_settling_s += t_settling.seconds
        print(
            f"round {r + 1}/{rounds}: raw {per_round / t_raw.seconds:,.0f} ev/s, "
            f"ours {per_round / t_ours.seconds:,.0f} ev/s"
        )
    sample = events(orgs, min(5000, n_events))
    with Timer() as t_slow:
        await per_event(conn, sample)
    await conn.close()
    await db.dispose()
    raw_rate, our_rate = n_events / raw_s, n_events / ours_s
    slow_rate = len(sample) / t_slow.seconds
    print(f"raw asyncpg unnest + counter update: {raw_rate:,.0f} events/s")
    print(
        f"one transaction per event (FOR UPDATE, {len(sample)} events): {slow_rate:,.0f} events/s"
    )
    settling = ", every event settling a hold" if holds else ""
    settling += ", every organization past its plan burning 5 grants" if grants else ""
    print(f"BatchWriter ({batch_size}/batch, {n_orgs} orgs{settling}): {our_rate:,.0f} events/s")
    print(
        f"ratio vs raw {our_rate / raw_rate:.2f}x (bar >= {0.5 if grants else 0.6}); "
        f"vs per-event {our_rate / slow_rate:.1f}x (reported)"
    )
    if holds:  # reported only: the bar is against the raw baseline above
        settling_rate = n_events / raw_settling_s
        print(
            f"raw settling the same holds (insert, delete, counter update): "
            f"{settling_rate:,.0f} events/s; ours {our_rate / settling_rate:.2f}x of it (reported)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--holds", action="store_true", help="every event settles a token hold")
    parser.add_argument(
        "--grants", action="store_true", help="every organization is past its plan, burning grants"
    )
    args = parser.parse_args()
    with bench_database() as (url, _server):
        tune_gc()  # as the biz2bricks-consumer command does before it starts the worker
        asyncio.run(
            measure(url, args.events, args.orgs, args.batch, args.rounds, args.holds, args.grants)
        )
