"""The spool writer: messages that could not be published yet, on their way to the spool.

During an outage the caller only appends to a deque (``put``): it neither wakes a thread nor
takes a lock per event. The writer thread wakes every ``spool_fsync_interval_ms``, or early
once half of ``spool_queue_max_messages`` wait, and writes what waits in large chunks: one
encode pass, one write and one fsync each. Few, large writes keep the writer's turns at the GIL
few, and each turn is a moment the caller may wait. Past ``spool_queue_max_messages`` the
caller writes a chunk itself rather than let memory grow or drop what it accepted.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable

from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message, Spool, SpoolClosedError, encode_line

log = logging.getLogger("biz2bricks_producer")

WRITE_CHUNK = 10_000  # messages per encode, write and fsync


class SpoolWriter:
    """Owns the queue of messages to spool and the thread that writes it to the spool."""

    def __init__(
        self,
        settings: ProducerSettings,
        metrics: ProducerMetrics,
        spool: Spool,
        claim_spool: Callable[[], Spool],
        stop: threading.Event,
        on_written: Callable[[], None],
    ) -> None:
        self.spool = spool
        self._claim_spool = claim_spool  # a slot of its own for events recorded after close
        self._metrics = metrics
        self._stop = stop
        self._on_written = on_written
        self._cap_bytes = settings.spool_max_bytes
        self._max_waiting = settings.spool_queue_max_messages
        self._wake_at = max(1, settings.spool_queue_max_messages // 2)
        self._interval_s = settings.spool_fsync_interval_ms / 1000
        self._pending: collections.deque[Message] = collections.deque()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="usage-spool", daemon=True)

    @property
    def waiting(self) -> int:
        """Messages not written to the spool yet."""
        return len(self._pending)

    def put(self, message: Message) -> None:
        """Queue one message for the spool; the caller's path during an outage."""
        pending = self._pending
        pending.append(message)
        waiting = len(pending)
        if waiting >= self._max_waiting:
            self.write_all()  # the writer is behind: this thread writes (one fsync per chunk)
        elif waiting >= self._wake_at and not self._wake.is_set():
            self._wake.set()

    def put_many(self, messages: Iterable[Message]) -> None:
        """Queue messages for the spool without writing; see ``write_soon``."""
        self._pending.extend(messages)

    def write_soon(self, *, now: bool = False) -> None:
        """Have the writer thread write what waits; this thread writes it with ``now`` or past
        ``spool_queue_max_messages``."""
        if now or len(self._pending) >= self._max_waiting:
            self.write_all()
        else:
            self._wake.set()

    def wake(self) -> None:
        """Write what waits now rather than at the next interval."""
        self._wake.set()

    def write_all(self) -> None:
        """Write and fsync, in chunks, on this thread, everything that waits when it is called.

        What callers add meanwhile waits for the next round: chasing it would turn one large
        write into a stream of small ones, each a turn at the GIL that a caller waits for.
        """
        pending = self._pending
        left = len(pending)
        while left > 0:
            chunk: list[Message] = []
            try:
                while len(chunk) < min(left, WRITE_CHUNK):
                    chunk.append(pending.popleft())
            except IndexError:
                left = 0  # another thread took the rest
            left -= len(chunk)
            if chunk:
                self.write(chunk, sync=True)

    def write(self, messages: list[Message], *, sync: bool) -> None:
        """Append ``messages`` to the spool (fsync with ``sync``), counting written and dropped.

        After the spool was closed, the messages go to a slot of their own, which the next
        process replays.
        """
        lines = [encode_line(data, attributes) for data, attributes in messages]
        try:
            written, dropped = self.spool.append(lines, sync=sync)
        except SpoolClosedError:
            late = self._claim_spool()
            try:
                written, dropped = late.append(lines)
            finally:
                late.close()
        self._metrics.add("spooled", written)
        if dropped:
            self._metrics.add("dropped", dropped)
            log.error(
                "producer.spool_full_dropped: %d events dropped, the spool is at its cap of"
                " %d bytes (USAGE_SPOOL_MAX_BYTES; Pub/Sub has been unreachable)",
                dropped,
                self._cap_bytes,
                extra={"dropped": dropped, "cap_bytes": self._cap_bytes},
            )
        self._on_written()

    def join(self, timeout_s: float) -> None:
        """Wake the writer and wait for it to end (after ``stop`` is set) within ``timeout_s``."""
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=max(0.0, timeout_s))

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self.write_all()
            except Exception:  # keep the thread alive: what waits is written next round
                log.exception("producer.spool_write_failed")
            if self._stop.is_set() and not self._pending:
                return
