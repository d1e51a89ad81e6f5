"""``biz2bricks-consumer`` that dies right after its first commit, before acking (fault tests).

The fault is a writer injected into the worker: it commits through the real writer, then
exits. Production code knows nothing of it. Run as
``python -m tests.consumer.crashing_consumer`` with the consumer's environment (command-line
arguments are ignored; the health server takes any free port).
"""

from __future__ import annotations

import asyncio
import os
import sys

from biz2bricks_consumer.batching import Batch
from biz2bricks_consumer.command import run_worker
from biz2bricks_consumer.committer import Writer
from biz2bricks_consumer.pricing_cache import PricedWriter, PricingCache
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_consumer.writer import WriteResult
from biz2bricks_core import DatabaseConfig, DatabaseManager
from biz2bricks_core.logs import configure_logging

EXIT_CODE = 86


class DiesAfterCommit:
    """A writer that commits through ``writer``, then exits at once, as a crash would."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    async def write(self, batch: Batch) -> WriteResult:
        await self._writer.write(batch)
        os._exit(EXIT_CODE)  # committed and not acked


async def crash_after_first_commit() -> int:
    settings = ConsumerSettings(health_port=0)
    db = DatabaseManager(DatabaseConfig())
    pricing = PricingCache(db, settings.pricing_refresh_s)
    writer = DiesAfterCommit(PricedWriter(db, pricing))
    return await run_worker(Worker(settings, db, pricing=pricing, writer=writer))


if __name__ == "__main__":
    configure_logging("INFO")
    sys.exit(asyncio.run(crash_after_first_commit()))
