import asyncio, time, statistics, sys
from bench._common import bench_database, events, manager, provision_orgs
from bench.consumer_write import realistic, chunks, with_holds, raw_batches
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from biz2bricks_core import recording
from biz2bricks_consumer.worker import tune_gc
from tests.factories import message_for
from tests.support import libpq_url
from sqlalchemy.engine import make_url
import asyncpg

HOLDS = "--holds" in sys.argv
async def main(url):
    orgs = await provision_orgs(url, 1000)
    db = manager(url)
    book = await load_price_book(db, ModelNames())
    writer = BatchWriter(db, lambda: book)
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    if HOLDS:
        await conn.execute("UPDATE usage_limits SET token_limit = 1000000000000")
    T = {k: [] for k in "params driver stmt commit total raw".split()}
    for r in range(4):
        evs = realistic(events(orgs, 25000))
        if HOLDS: evs = await with_holds(conn, evs)
        batches = [Batch(events=c, sources=[message_for(e) for e in c]) for c in chunks(evs, 1000)]
        rawb = chunks(realistic(events(orgs, 25000)), 1000)
        for b, rb in zip(batches, rawb):
            t0 = time.perf_counter(); await raw_batches(conn, [rb]); T["raw"].append(time.perf_counter()-t0)
            t0 = time.perf_counter()
            b = await writer._partitions.admit(b)
            p = recording.event_params(b.events, book)
            t1 = time.perf_counter()
            async with db.driver() as c:
                t2 = time.perf_counter()
                tr = c.transaction(); await tr.start()
                t3 = time.perf_counter()
                row = await c.fetchrow(recording.INSERT_AND_COUNT, *p[:3])
                t4 = time.perf_counter()
                await tr.commit()
                t5 = time.perf_counter()
            t6 = time.perf_counter()
            T["params"].append(t1-t0); T["driver"].append((t2-t1)+(t6-t5)); T["stmt"].append(t4-t3); T["commit"].append(t5-t4); T["total"].append(t6-t0)
    for k, v in T.items():
        print(f"{k:8s} median {statistics.median(v[10:])*1000:6.2f} ms")
    await conn.close(); await db.dispose()

with bench_database() as (url, _):
    tune_gc()
    asyncio.run(main(url))
