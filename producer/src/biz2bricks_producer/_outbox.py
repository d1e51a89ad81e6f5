"""The outbox: the bounded in-memory queue and the sender thread that publishes it in batches.

``offer`` is the caller's whole cost while Pub/Sub answers: one lock, a few comparisons and an
append (and a wake-up of the sender for the first message of a batch and for a full one). The
sender sleeps while nothing is queued; it takes batches of up to ``batch_max_messages`` and
publishes each with one Publish RPC (no per-message future: fire-and-forget needs only the
batch's outcome). A batch that fails is handed to the spool writer under ``lock``, so a message
is always in exactly one place: the queue, a batch in flight, or the spool writer.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from biz2bricks_producer._spool_writer import SpoolWriter
from biz2bricks_producer._transport import Transport
from biz2bricks_producer.errors import PubSubUnavailableError
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message


class Outbox:
    """Owns the queue, the batches in flight, the Pub/Sub-available flag and the sender thread."""

    def __init__(
        self,
        settings: ProducerSettings,
        metrics: ProducerMetrics,
        transport: Transport,
        spool_writer: SpoolWriter,
        stop: threading.Event,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._max_messages = settings.max_in_flight_messages
        self._max_bytes = settings.max_in_flight_bytes
        self._batch_max = settings.batch_max_messages
        self._latency_s = settings.batch_max_latency_ms / 1000
        self._metrics = metrics
        self._transport = transport
        self._spool_writer = spool_writer
        self._stop = stop
        self._on_failure = on_failure
        self.lock = threading.Lock()  # taken by offer(); also held across fork()
        self._queue: collections.deque[Message] = collections.deque()
        self._queued_bytes = 0
        self._in_flight: dict[int, list[Message]] = {}  # batches the sender publishes now
        self._batch_seq = 0
        self._sending = 0  # messages in _in_flight
        self._available = True  # False after a failed publish, until the replayer gets through
        self.draining = False  # after SIGTERM or close: offer() admits nothing more
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="usage-send", daemon=True)

    # -- the caller's side --

    def offer(self, message: Message) -> bool:
        """Count the event as accepted and queue it; False when it must go to the spool instead.

        Refused while Pub/Sub is believed down, while draining, or past the in-flight caps.
        """
        size = len(message[0])
        first = False
        with self.lock:
            self._metrics.accepted += 1  # only ever written here, under this lock
            admit = (
                self._available
                and not self.draining
                and len(self._queue) + self._sending < self._max_messages
                and self._queued_bytes + size <= self._max_bytes
            )
            if admit:
                first = not self._queue
                self._queue.append(message)
                self._queued_bytes += size
        if admit and (first or len(self._queue) >= self._batch_max):
            self._wake.set()  # the first message starts the batch's latency; a full one goes now
        return admit

    # -- Pub/Sub state, set by the sender and the replayer --

    @property
    def available(self) -> bool:
        """False from a failed publish until the replayer reports Pub/Sub reachable."""
        return self._available

    def mark_unavailable(self) -> bool:
        """New events go to the spool; True when Pub/Sub was believed available until now."""
        with self.lock:
            was, self._available = self._available, False
        return was

    def mark_available(self) -> bool:
        """Queue new events again; True when Pub/Sub was believed down until now."""
        with self.lock:
            was, self._available = self._available, True
        return not was

    # -- state for flush, stats and drain --

    def busy(self) -> bool:
        """True while messages wait in the queue or in a batch in flight."""
        with self.lock:
            return bool(self._queue) or self._sending > 0

    def in_memory(self) -> tuple[int, int]:
        """(messages queued or in flight, bytes queued)."""
        with self.lock:
            return len(self._queue) + self._sending, self._queued_bytes

    def stop_accepting(self) -> None:
        """From now on offer() refuses: the caller writes new events to the spool itself."""
        with self.lock:
            self.draining = True

    def move_to_spool(self) -> None:
        """Hand the queue and the batches in flight to the spool writer, under the lock.

        The sender finds its batch gone when its publish returns, and neither counts nor spools
        it a second time.
        """
        with self.lock:
            self._spool_writer.put_many(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            for batch in self._in_flight.values():
                self._spool_writer.put_many(batch)
            self._in_flight.clear()
            self._sending = 0

    def wake(self) -> None:
        """Publish what is queued now rather than after ``batch_max_latency_ms``."""
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        """Wake the sender and wait for it to end (after ``stop`` is set) within ``timeout_s``."""
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=max(0.0, timeout_s))

    # -- the sender thread --

    def _run(self) -> None:
        # Asleep while nothing is queued (all through an outage): no timed wake-ups that would
        # take the GIL from the callers for nothing.
        while True:
            self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._batch_max and not self._stop.is_set():
                self._wake.wait(self._latency_s)  # let the batch fill
                self._wake.clear()
            while self._queue:
                key, batch = self._take_batch()
                self._send_batch(key, batch)
            if self._stop.is_set() and not self._queue:
                return

    def _take_batch(self) -> tuple[int, list[Message]]:
        batch: list[Message] = []
        size = 0
        with self.lock:
            while self._queue and len(batch) < self._batch_max:
                message = self._queue.popleft()
                batch.append(message)
                size += len(message[0])
            self._queued_bytes -= size
            self._batch_seq += 1
            self._in_flight[self._batch_seq] = batch
            self._sending += len(batch)
            return self._batch_seq, batch

    def _send_batch(self, key: int, batch: list[Message]) -> None:
        error: Exception | None = None
        try:
            if not self._available:
                raise PubSubUnavailableError("Pub/Sub failed recently; spooling")
            self._transport.publish(batch)
        except Exception as exc:
            error = exc
        with self.lock:
            owned = self._in_flight.pop(key, None) is not None
            if owned:
                self._sending -= len(batch)
                if error is not None:
                    self._spool_writer.put_many(batch)  # under the lock: never in between
        if not owned:
            return  # drained while in flight: the spool writer has it already
        if error is None:
            self._metrics.add("published", len(batch))
            return
        self._on_failure(error)
        self._spool_writer.write_soon(now=self.draining)
