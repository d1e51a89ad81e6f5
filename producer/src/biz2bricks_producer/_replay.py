"""The replayer: publishes the spool once Pub/Sub answers, whole segments at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from biz2bricks_producer._transport import Transport
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.spool import Message, Spool

log = logging.getLogger("biz2bricks_producer")

REPLAY_CHUNK = 1000


class Replayer:
    """Owns the replay thread: this slot's sealed segments, then one orphaned slot's per round.

    A segment is deleted only after every message in it was published, so a crash in between
    publishes it again (the consumer counts an event_id once).
    """

    def __init__(
        self,
        spool: Spool,
        transport: Transport,
        metrics: ProducerMetrics,
        stop: threading.Event,
        interval_s: Callable[[], float],
        on_failure: Callable[[BaseException], None],
        on_reachable: Callable[[bool], None],
    ) -> None:
        self.spool = spool
        self._transport = transport
        self._metrics = metrics
        self._stop = stop
        self._interval_s = interval_s
        self._on_failure = on_failure
        self._on_reachable = on_reachable  # True: a publish proved it; False: nothing to prove
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="usage-replay", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(self._interval_s())
            self.wake.clear()
            if self._stop.is_set():
                return
            try:
                done = self.replay_once()
            except Exception:  # keep the thread alive; the next round retries
                log.exception("producer.replay_failed")
                done = False
            if not done:
                # Pub/Sub still down: the next round after the interval, not at every spool
                # write (each round reads a segment and may build a client: work the callers'
                # threads would wait for at the GIL).
                self._stop.wait(self._interval_s())

    def replay_once(self) -> bool:
        """Publish an orphaned slot's segments, then this slot's sealed ones; False on failure."""
        with self.spool.orphaned_segments() as orphans:
            if orphans and not self._replay_segments(orphans):
                return False
        if self.spool.is_empty():
            self._on_reachable(False)
            return True
        self.spool.seal()
        if not self._replay_segments(list(self.spool.sealed_segments())):
            return False
        self._on_reachable(True)
        return True

    def _replay_segments(self, segments: list[Path]) -> bool:
        for segment in segments:
            replayed = 0
            for messages, corrupt in self.spool.read_chunks(segment, REPLAY_CHUNK):
                if corrupt:
                    self._metrics.add("corrupt_spool_lines", corrupt)
                    log.error(
                        "producer.spool_corrupt_lines: %d unreadable lines skipped in %s",
                        corrupt,
                        segment,
                        extra={"segment": str(segment), "lines": corrupt},
                    )
                if not self._publish(messages):
                    return False
                replayed += len(messages)
            self.spool.remove(segment)
            self._metrics.add("replayed", replayed)
            log.info(
                "producer.spool_replayed",
                extra={"segment": str(segment), "messages": replayed},
            )
        return True

    def _publish(self, messages: list[Message]) -> bool:
        if not messages:
            return True
        if self._stop.is_set():
            return False
        try:
            self._transport.publish(messages)
        except Exception as error:
            self._on_failure(error)
            self._transport.renew()
            return False
        return True
