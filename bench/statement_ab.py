"""A/B of two versions of the batch statement, server time only, batch by batch.

Where ``bench.writer_ab`` times whole writes (Python, round trips and commit included), this
prepares both versions of ``INSERT_AND_COUNT`` on one connection (generic plans, as the writer
gets them after five runs) and alternates them batch by batch, each run under
``EXPLAIN (ANALYZE, TIMING OFF)`` inside its own committed transaction, so both see the same
growing tables. It prints the median of the paired ratios B/A and their quartiles: on this
machine an A/A run reads 1.005 (0.96-1.05), so a difference of ~2% shows. Version B is the
working tree; version A is ``biz2bricks_core/recording.py`` at a git revision (default HEAD),
importing today's other modules; each version's own ``event_params`` makes its parameters
(their types are read from the statement's casts), so the two may take different ones. To
measure a variant, edit the working tree and compare with
HEAD (an ablation: remove a part, the ratio is its share).
Run: uv run python -m bench.statement_ab [--baseline HEAD] [--batches 60] [--holds]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
from pathlib import Path
from types import ModuleType

from bench._common import bench_database, events
from bench.consumer_write import chunks, realistic, set_scene, with_holds
from bench.writer_ab import RECORDING, _at, _load
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.writer import BatchWriter
from biz2bricks_core import recording
from tests.factories import message_for

WARM_UP = 10  # batches written by the writer first, so that both plans meet a filled table


def _literal(value: object) -> str:
    """A parameter of ``event_params`` as an SQL literal (its type comes from the PREPARE)."""
    if isinstance(value, list):
        value = "{" + ",".join(map(str, value)) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def _prepare(name: str, sql: str) -> str:
    """A PREPARE of ``sql`` whose parameter types are read from its casts ($1::jsonb, ...)."""
    types = {}
    for number, sql_type in re.findall(r"\$(\d+)::([a-z]+(?:\[\])?)", sql):
        types[int(number)] = sql_type
    uncast = re.sub(r"(\$\d+)::[a-z]+(?:\[\])?", r"\1", sql)
    listed = ", ".join(types[n] for n in sorted(types))
    return f"PREPARE {name}({listed}) AS {uncast}"


async def measure(url: str, a: ModuleType, b: ModuleType, batches: int, holds: bool) -> None:
    scene = await set_scene(url, 1000, holds)
    db, book, conn = scene.db, scene.book, scene.conn
    writer = BatchWriter(db, lambda: book)
    items = realistic(events(scene.orgs, 1000 * (WARM_UP + 2 * batches)))
    if holds:
        items = await with_holds(conn, items)
    cut = chunks(items, 1000)
    for c in cut[:WARM_UP]:
        await writer.write(Batch(events=c, sources=[message_for(e) for e in c]))
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    versions = {"a": a, "b": b}
    for name, version in versions.items():
        await conn.execute(_prepare(name, version.INSERT_AND_COUNT))
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i, c in enumerate(cut[WARM_UP:]):
        name = "ab"[(i + i // 2) % 2]  # a b b a a b b a ...: neither always goes first
        *params, _ = versions[name].event_params(c, book)
        async with conn.transaction():
            plan = await conn.fetch(
                f"EXPLAIN (ANALYZE, TIMING OFF) EXECUTE {name}({', '.join(map(_literal, params))})"
            )
        found = re.search(r"Execution Time: ([\d.]+)", plan[-1][0])
        assert found is not None, plan[-1][0]
        times[name].append(float(found.group(1)))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{2 * batches} batches", flush=True)
    await conn.close()
    await db.dispose()
    ratios = [b / a for a, b in zip(times["a"], times["b"], strict=False)]
    low, _, high = statistics.quantiles(ratios, n=4)
    print(
        f"server ms, medians: A {statistics.median(times['a']):.2f}, "
        f"B {statistics.median(times['b']):.2f}"
    )
    print(f"paired B/A median {statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="HEAD", help="git revision of version A")
    parser.add_argument("--batches", type=int, default=60, help="batches of 1,000 per version")
    parser.add_argument("--holds", action="store_true", help="every event settles a token hold")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_database() as (url, _server):
        baseline = _load(_at(args.baseline, RECORDING), "recording_baseline", Path(tmp))
        asyncio.run(measure(url, baseline, recording, args.batches, args.holds))
