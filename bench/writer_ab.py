"""A/B of two versions of the write path, batch by batch, on one database.

Separate runs of ``bench.consumer_write`` drift by about 10% on a noisy machine; two writers
alternating batch by batch, with the raw baseline of consumer_write between them, see the
same noise and show differences of a few percent. Version B is the working tree; version A is
the same writer with ``biz2bricks_core/recording.py`` (the batch statement and
``record_events``; ``--module writer``: the consumer's ``writer.py``) as it was at a git
revision (default HEAD). Both write into the same tables (the schema of the working tree), and
A imports today's biz2bricks_core otherwise: a revision whose module reads a column or calls a
helper that has since changed cannot be the baseline (compare commit by commit instead).
Run: uv run python -m bench.writer_ab [--baseline HEAD] [--module recording|writer]
    [--events 50000] [--batch 1000] [--holds] [--grants]
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

from bench._common import Timer, bench_database, events
from bench.consumer_write import chunks, raw_batches, realistic, set_scene, with_holds
from biz2bricks_consumer import writer as working_tree
from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.worker import tune_gc
from tests.factories import message_for

WRITER = "consumer/src/biz2bricks_consumer/writer.py"
RECORDING = "shared_models/src/biz2bricks_core/recording.py"


def _load(source: str, name: str, workdir: Path) -> ModuleType:
    path = workdir / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _at(revision: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def writer_at(revision: str, workdir: Path, module: str = "recording") -> ModuleType:
    """A writer module whose ``module`` (recording or writer) is as it was at ``revision``."""
    if module == "writer":
        return _load(_at(revision, WRITER), "writer_baseline", workdir)
    recording = _load(_at(revision, RECORDING), "recording_baseline", workdir)
    writer = _load(Path(working_tree.__file__).read_text(), "writer_baseline", workdir)
    writer.record_events = recording.record_events  # type: ignore[attr-defined]
    return writer


async def measure(
    url: str, baseline: ModuleType, n_events: int, batch_size: int, holds: bool, grants: bool
) -> None:
    scene = await set_scene(url, 1000, holds, grants)
    orgs, db, conn = scene.orgs, scene.db, scene.conn
    writers = {
        "A": baseline.BatchWriter(db, lambda: scene.book),
        "B": working_tree.BatchWriter(db, lambda: scene.book),
    }
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
    parser.add_argument("--module", choices=("recording", "writer"), default="recording")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--holds", action="store_true", help="every event settles a token hold")
    parser.add_argument("--grants", action="store_true", help="every organization burns grants")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_database() as (url, _server):
        tune_gc()
        module = writer_at(args.baseline, Path(tmp), args.module)
        asyncio.run(measure(url, module, args.events, args.batch, args.holds, args.grants))
