"""A/B of two versions of the consumer's writer, batch by batch, on one database.

Separate runs of ``bench.consumer_write`` drift by about 10% on a noisy machine; two writers
alternating batch by batch, with the raw baseline of consumer_write between them, see the
same noise and show differences of a few percent. Version A is ``writer.py`` at a git revision
(default HEAD), version B the working tree. Both write into the same tables (the schema of the
working tree), and A imports today's biz2bricks_core: a revision whose writer calls a helper
that has since changed cannot be the baseline (compare commit by commit instead).
Run: uv run python -m bench.writer_ab [--baseline HEAD] [--events 50000] [--batch 1000]
    [--holds]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import asyncpg
from sqlalchemy.engine import make_url

from bench._common import Timer, bench_database, events, manager, provision_orgs
from bench.consumer_write import chunks, raw_batches, realistic, with_holds
from biz2bricks_consumer import writer as working_tree
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.worker import tune_gc
from biz2bricks_core.model_names import ModelNames
from biz2bricks_core.price_rows import load_price_book
from tests.factories import message_for
from tests.support import libpq_url

WRITER = "consumer/src/biz2bricks_consumer/writer.py"


def writer_at(revision: str, workdir: Path) -> ModuleType:
    """The writer module as it was at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{WRITER}"], capture_output=True, text=True, check=True
    ).stdout
    path = workdir / "writer_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("writer_baseline", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {WRITER} at {revision}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def measure(
    url: str, baseline: ModuleType, n_events: int, batch_size: int, holds: bool
) -> None:
    orgs = await provision_orgs(url, 1000)
    db = manager(url)
    book = await load_price_book(db, ModelNames())
    writers = {
        "A": baseline.BatchWriter(db, lambda: book),
        "B": working_tree.BatchWriter(db, lambda: book),
    }
    conn = await asyncpg.connect(libpq_url(make_url(url)))
    if holds:
        await conn.execute("UPDATE usage_limits SET token_limit = 1000000000000")
    seconds = {"A": 0.0, "B": 0.0, "raw": 0.0}
    rounds = 4
    per_round = n_events // rounds
    for r in range(rounds):
        batches: dict[str, list[Batch]] = {}
        for name in writers:
            ours = realistic(events(orgs, per_round))
            if holds:
                ours = await with_holds(conn, ours)
            batches[name] = [
                Batch(events=c, sources=[message_for(e) for e in c])
                for c in chunks(ours, batch_size)
            ]
        raw = chunks(realistic(events(orgs, per_round)), batch_size)
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for i in range(len(raw)):
            for name in order:
                with Timer() as t:
                    await writers[name].write(batches[name][i])
                seconds[name] += t.seconds
            with Timer() as t:
                await raw_batches(conn, [raw[i]])
            seconds["raw"] += t.seconds
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {per_round / v * (r + 1):,.0f} ev/s" for k, v in seconds.items())
        )
    await conn.close()
    await db.dispose()
    rate = {k: n_events / v for k, v in seconds.items()}
    print(f"raw {rate['raw']:,.0f} ev/s; A {rate['A']:,.0f} ev/s; B {rate['B']:,.0f} ev/s")
    print(
        f"A {rate['A'] / rate['raw']:.2f}x raw, B {rate['B'] / rate['raw']:.2f}x raw; "
        f"B/A {rate['B'] / rate['A']:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="HEAD", help="git revision of version A")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--holds", action="store_true", help="every event settles a token hold")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_database() as (url, _server):
        tune_gc()
        module = writer_at(args.baseline, Path(tmp))
        asyncio.run(measure(url, module, args.events, args.batch, args.holds))
