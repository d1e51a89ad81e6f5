"""One process's parts of a producer, wired together: outbox, spool writer and replayer.

Every accepted message is, at any moment, in exactly one place: the outbox's queue, a batch in
flight (owned by the sender until its publish returns), the spool writer's queue, or the spool.
``drain`` hands the first three to the spool when Pub/Sub does not take them in time. A forked
child builds a pipeline of its own (threads, locks and client belong to one process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from biz2bricks_producer._outbox import Outbox
from biz2bricks_producer._replay import Replayer
from biz2bricks_producer._spool_writer import SpoolWriter
from biz2bricks_producer._transport import Transport
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message, Spool

log = logging.getLogger("biz2bricks_producer")

DRAIN_REPLAY_INTERVAL_S = 0.05  # while draining, the replayer publishes the spool at once


class Pipeline:
    """The outbox, the spool writer and the replayer of one process, and what joins them."""

    def __init__(
        self,
        settings: ProducerSettings,
        metrics: ProducerMetrics,
        spool: Spool,
        claim_spool: Callable[[], Spool],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.spool = spool
        self.transport = Transport(settings)
        self._stop = threading.Event()
        self.spool_writer = SpoolWriter(
            settings, metrics, spool, claim_spool, self._stop, on_written=self._spooled
        )
        self.outbox = Outbox(
            settings, metrics, self.transport, self.spool_writer, self._stop, self.publish_failed
        )
        self.replayer = Replayer(
            spool,
            self.transport,
            metrics,
            self._stop,
            self._replay_interval_s,
            self.publish_failed,
            self.reachable,
        )

    def start(self) -> None:
        """Start the writer, replayer and sender threads."""
        self.spool_writer.thread.start()
        self.replayer.thread.start()
        self.outbox.thread.start()

    # -- the caller's side --

    def send(self, message: Message) -> None:
        """Queue an encoded event for Pub/Sub, or for the spool when the outbox refuses it."""
        if self.outbox.offer(message):
            return
        if self.outbox.draining:
            self.spool_writer.write([message], sync=False)  # the process may end any moment
        else:
            self.spool_writer.put(message)

    # -- what the parts report --

    def publish_failed(self, error: BaseException) -> None:
        """A publish failed (sender or replayer): spool new events until a replay gets through."""
        self._metrics.add("publish_errors")
        if self.outbox.mark_unavailable():
            cause = f"{type(error).__name__}: {error}"[:500]
            log.warning(
                "producer.pubsub_unavailable_spooling: %s (events go to the spool, replayed later)",
                cause,
                extra={"error": cause},
            )
        self.replayer.wake.set()

    def reachable(self, proved: bool) -> None:
        """The replayer published the spool (``proved``) or found nothing left to show it down."""
        if self.outbox.mark_available() and proved:
            log.info("producer.pubsub_available_again")

    def _spooled(self) -> None:
        self.replayer.wake.set()

    def _replay_interval_s(self) -> float:
        if self.outbox.draining:
            return DRAIN_REPLAY_INTERVAL_S
        return self._settings.replay_interval_s

    # -- flush, drain, stop --

    def idle(self) -> bool:
        """True when nothing accepted waits anywhere: memory, spool queue or spool."""
        return not self.outbox.busy() and self.spool_writer.waiting == 0 and self.spool.is_empty()

    def wake_all(self) -> None:
        """Have every thread do its work now rather than at its next interval."""
        self.outbox.wake()
        self.spool_writer.wake()
        self.replayer.wake.set()

    def drain(self, deadline: float) -> None:
        """Publish what is in memory until ``deadline`` (monotonic), then spool what is left.

        From here on new events go straight to the spool, and the replayer publishes the spool
        every ``DRAIN_REPLAY_INTERVAL_S`` rather than every ``replay_interval_s``.
        """
        self.outbox.stop_accepting()
        self.replayer.wake.set()
        while time.monotonic() < deadline:
            if not self.outbox.busy() or not self.outbox.available:
                break
            self.outbox.wake()
            time.sleep(0.005)
        self.outbox.move_to_spool()
        self.spool_writer.write_all()

    def stop(self, deadline: float) -> None:
        """End the threads by ``deadline``, write what is left, close the spool and the client."""
        self._stop.set()
        self.replayer.wake.set()
        if self.replayer.thread.is_alive():
            self.replayer.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.outbox.join(deadline - time.monotonic())
        self.spool_writer.join(deadline - time.monotonic())
        self.spool_writer.write_all()
        self.spool.close()
        self.transport.close()

    # -- fork --

    def before_fork(self) -> None:
        """Hold the outbox's and the spool's locks across fork(): no half-made batch or line."""
        self.outbox.lock.acquire()
        self.spool.before_fork()

    def after_fork_in_parent(self) -> None:
        """Release what ``before_fork`` held."""
        self.spool.after_fork_in_parent()
        self.outbox.lock.release()
