"""The worker: a supervisor of parts that each do one job.

Pull loops (``PullBuffer``) fill a bounded buffer; batch loops take batches from it and hand
each to the ``BatchCommitter``, the one place that decides ack, release or reject; ``InFlight``
owns the leases of what was pulled and not yet acked or released; ``DatabaseRetry`` owns the
backoff and the shutdown grace; the ``Supervisor`` restarts a loop that died and shows it in
readiness. Stopping never acks what is not committed, and the worker returns within the
shutdown grace whatever state it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

from sqlalchemy import text

from biz2bricks_consumer.alert_relay import AlertRelay
from biz2bricks_consumer.batching import InboundMessage, build_batch
from biz2bricks_consumer.buffer import PullBuffer
from biz2bricks_consumer.committer import BatchCommitter, Writer
from biz2bricks_consumer.errors import BatchReleased, WorkerFailed
from biz2bricks_consumer.inflight import InFlight
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pricing_cache import PricedWriter, PricingCache, UnpricedLog
from biz2bricks_consumer.pubsub import PubSubSource
from biz2bricks_consumer.reporting import ResultReporter
from biz2bricks_consumer.retry import DatabaseRetry
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.supervision import Supervisor
from biz2bricks_core.database import DatabaseManager

log = logging.getLogger(__name__)

# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000
# Time kept back from the grace for releasing, closing and exiting after the loops stopped.
SHUTDOWN_RESERVE_S = 0.5


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the per-message path of a long-running worker.

    Every message allocates a few dozen objects; with CPython's defaults a collection runs
    every few messages and, now and then, walks the whole long-lived heap of grpc, SQLAlchemy
    and pydantic. Freezing what exists at start-up and collecting less often cut decoding from
    ~7 us to ~2-3 us per message here (docs/benchmarks.md). Memory stays bounded: almost all
    garbage is freed by reference counting; the collector still runs, only less often.
    Called by the command before the worker starts; embedders may call it too.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class Worker:
    """Consumes the usage subscription until asked to stop (or idle, if configured).

    ``writer`` commits each batch (default: ``BatchWriter`` behind ``pricing``); tests inject
    a failing or crashing one here.
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        db: DatabaseManager,
        source: PubSubSource | None = None,
        metrics: ConsumerMetrics | None = None,
        *,
        pricing: PricingCache | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.source = source if source is not None else PubSubSource(settings)
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.pricing = (
            pricing if pricing is not None else PricingCache(db, settings.pricing_refresh_s)
        )
        self.retry = DatabaseRetry(settings, self.metrics)
        self.inflight = InFlight(self.source, settings.ack_deadline_s, self.metrics)
        self.alerts = AlertRelay(settings, db, self.metrics)
        self.committer = BatchCommitter(
            writer if writer is not None else PricedWriter(db, self.pricing),
            self.inflight,
            self.retry,
            self.metrics,
            ResultReporter(
                self.metrics, UnpricedLog(settings.unpriced_log_interval_s), self.alerts
            ),
        )
        self._stopping = asyncio.Event()
        self._gave_up = False  # stopped because the database stayed down past exit_when_idle_s
        self.buffer = PullBuffer(
            settings,
            self.source,
            self.inflight,
            self.metrics,
            database_ok=self.retry.database_ok,
            stopping=self._stopping,
        )
        self.supervisor = Supervisor(self.metrics, self._stopping)

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop pulling; finish the batch in hand within the grace period, then return."""
        if not self._stopping.is_set():
            log.info("consumer.stopping", extra={"grace_s": self.settings.shutdown_grace_s})
            self.retry.begin_stop(
                time.monotonic() + self.settings.shutdown_grace_s - SHUTDOWN_RESERVE_S
            )
            self._stopping.set()

    async def run(self) -> None:
        """Run until stopped or idle; raise WorkerFailed if a task keeps dying.

        Once stopped, returns within the shutdown grace: whatever is still running when the
        grace ends (a commit waiting on an unreachable database) is cancelled, unacked.
        """
        main = asyncio.create_task(self._main(), name="worker-main")
        try:
            while not main.done():
                grace = self.retry.remaining_grace_s()
                if grace is not None and grace <= 0:
                    log.warning("consumer.grace_over", extra={"released": "batch in hand"})
                    main.cancel()
                    break
                if self._unreachable_past_idle():
                    # No grace to wait out: nothing commits while the database is down, and
                    # what was pulled goes back unacked.
                    self._gave_up = True
                    self.stop()
                    self.retry.begin_stop(time.monotonic())
                await asyncio.wait([main], timeout=0.1)
        finally:
            self._stopping.set()
            await self._shutdown()
            if not main.done():
                main.cancel()
        if not main.cancelled() and main.exception() is not None:
            raise main.exception()  # type: ignore[misc]
        if self.supervisor.failure is not None:
            raise WorkerFailed(f"a worker task kept dying: {self.supervisor.failure!r}")
        if self._gave_up:
            raise WorkerFailed(
                f"the database did not answer for {self.settings.exit_when_idle_s:g} s "
                "(--exit-when-idle): nothing was acked that was not committed"
            )

    async def _main(self) -> None:
        with contextlib.suppress(BatchReleased):  # every batch loads prices too
            await self.retry.call(self.pricing.refresh_if_due)
        if self.stopping:
            return
        sup = self.supervisor
        for i in range(self.settings.pull_concurrency):
            sup.start(f"pull-{i}", self.buffer.pull_loop)
        sup.start("leases", self.inflight.keep_leases)
        sup.start("alert-relay", self.alerts.run)
        writers = [
            sup.start(f"batch-{i}", self._batch_loop)
            for i in range(self.settings.write_concurrency)
        ]
        done = asyncio.create_task(self._writers_done(writers))
        failed = asyncio.create_task(sup.failed.wait())
        try:
            await asyncio.wait([done, failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            failed.cancel()

    @staticmethod
    async def _writers_done(writers: list[asyncio.Task[None]]) -> None:
        await asyncio.wait(writers)

    async def _shutdown(self) -> None:
        """Stop every task, release what was not committed; bounded by the grace."""
        await self.buffer.wake()
        grace = self.retry.remaining_grace_s()
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace is None else grace)
        # A pull already sent cannot be cancelled (it runs in a thread): let it return so that
        # what it brings back is released now instead of held until its lease lapses.
        await self.supervisor.wait(
            "pull", min(deadline - time.monotonic(), self.settings.pull_timeout_s + 0.5)
        )
        # What is left of the grace, not all of it again: acks may hang while Pub/Sub does.
        await self.inflight.drain(deadline - time.monotonic())
        await self.supervisor.cancel_all(timeout_s=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.inflight.release_all(), timeout=SHUTDOWN_RESERVE_S)
        # Alerts committed by this or a dead replica leave before the process does.
        await self.alerts.drain(max(deadline - time.monotonic(), 0.1))
        self.alerts.close()
        log.info("consumer.stopped", extra=self.metrics.summary())

    async def _batch_loop(self) -> None:
        """Take pulled messages and write them as batches until stopped or idle.

        Several loops may run: each batch is its own transaction, and counter rows are locked
        in organization order, so concurrent batches wait for each other instead of deadlocking
        while their decoding overlaps the other's commit.
        """
        while True:
            messages = await self.buffer.next_messages()
            if messages is None:
                if self.stopping or self._idle_expired():
                    return
                if not self.retry.database_ok.is_set():
                    with contextlib.suppress(BatchReleased):
                        await self.retry.call(self.check_database)
                continue
            await self._process(messages)

    def _unreachable_past_idle(self) -> bool:
        """With --exit-when-idle, a database down that long ends the worker too."""
        idle_s, down_since = self.settings.exit_when_idle_s, self.retry.down_since
        return (
            idle_s is not None
            and not self.stopping
            and down_since is not None
            and time.monotonic() - down_since >= idle_s
        )

    def _idle_expired(self) -> bool:
        idle_s = self.settings.exit_when_idle_s
        return (
            idle_s is not None
            and self.buffer.empty()
            and time.monotonic() - self.buffer.last_activity >= idle_s
        )

    async def _process(self, messages: list[InboundMessage]) -> None:
        started = time.monotonic()
        batch = build_batch(messages)
        await self.committer.commit(batch)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self.metrics.batch_size.observe(len(batch))
        if batch.oldest_publish_time_s is not None:
            self.metrics.oldest_message_age.set(max(time.time() - batch.oldest_publish_time_s, 0))
        self.buffer.last_activity = time.monotonic()

    async def check_database(self) -> None:
        """Raise unless the database answers `SELECT 1` (readiness, and probing after outages)."""
        async with self.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def check_pulling(self) -> None:
        """Raise unless a pull loop runs on an existing subscription (readiness)."""
        if self.buffer.subscription_missing:
            raise RuntimeError(f"subscription {self.settings.subscription_path} is missing")
        if self.supervisor.alive("pull") == 0:
            raise RuntimeError("no pull loop is running")
