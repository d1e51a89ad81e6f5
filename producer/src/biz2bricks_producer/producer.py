"""UsageProducer: record usage without ever blocking or failing the caller.

``record_tokens`` validates, encodes and hands the message to the Pub/Sub client's batching
publisher. Memory is capped by our own in-flight count (the client's flow control is set to
ignore, since blocking or raising are both wrong here); past the cap, or while Pub/Sub fails,
messages go to a spool queue that a background thread appends to disk. Another thread replays
the spool once Pub/Sub answers again, and on the next start after a crash.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import uuid
import weakref
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import (
    BatchSettings,
    LimitExceededBehavior,
    PublisherOptions,
    PublishFlowControl,
)

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.events import encode_event, validate_event
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message, Spool, encode_line

log = logging.getLogger("biz2bricks_producer")

# Publish errors the client retries before giving the message back to us for the spool.
RETRYABLE_PUBLISH_ERRORS = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.Unknown,
    gexc.ResourceExhausted,
)
REPLAY_CHUNK = 1000


def publisher_client(settings: ProducerSettings) -> PublisherClient:
    """The Pub/Sub client as this producer configures it (the one place that does)."""
    retry = Retry(
        predicate=if_exception_type(*RETRYABLE_PUBLISH_ERRORS),
        initial=0.1,
        maximum=2.0,
        multiplier=2.0,
        timeout=settings.publish_timeout_s,
    )
    return PublisherClient(
        batch_settings=BatchSettings(
            max_messages=settings.batch_max_messages,
            max_latency=settings.batch_max_latency_ms / 1000,
            max_bytes=4 * 1024**2,
        ),
        publisher_options=PublisherOptions(
            # Our own cap decides; the client must neither block the caller nor raise.
            flow_control=PublishFlowControl(limit_exceeded_behavior=LimitExceededBehavior.IGNORE),
            retry=retry,
            timeout=min(settings.publish_timeout_s, 10.0),
        ),
    )


class UsageProducer:
    """Fire-and-forget publisher of usage events; see the module docstring."""

    def __init__(self, settings: ProducerSettings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = ProducerSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        self.metrics = ProducerMetrics()
        self._topic = settings.topic_path
        self._publisher = publisher_client(settings)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._transport_ok = True
        self._pending: collections.deque[Message] = collections.deque()
        self._wake_writer = threading.Event()
        self._wake_replayer = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._spool = Spool(
            settings.spool_dir, settings.spool_max_bytes, settings.spool_segment_bytes
        )
        self._writer = threading.Thread(target=self._write_loop, name="usage-spool", daemon=True)
        self._replayer = threading.Thread(
            target=self._replay_loop, name="usage-replay", daemon=True
        )
        self._writer.start()
        self._replayer.start()
        _close_at_exit(self)
        if not self._spool.is_empty():
            log.info(
                "producer.spool_found",
                extra={"dir": str(self._spool.dir), "bytes": self._spool.size_bytes},
            )

    # -- the caller's side: never blocks, never raises (unless strict) --

    def record_tokens(
        self,
        *,
        organization_id: uuid.UUID | str,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        user_id: uuid.UUID | str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        operation: str | None = None,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        event_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record one LLM call's tokens; returns its event_id (the idempotency key).

        A retry with the same ``event_id`` is counted once. Invalid arguments are logged,
        counted as rejected and dropped (``ValueError`` with ``strict``).
        """
        fields = {
            "event_id": event_id if event_id is not None else uuid.uuid4(),
            "organization_id": organization_id,
            "user_id": user_id,
            "occurred_at": occurred_at if occurred_at is not None else datetime.now(UTC),
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "operation": operation,
            "request_id": request_id,
            "metadata": metadata,
        }
        try:
            event = validate_event(fields)
            data, attributes = encode_event(event)
        except InvalidEventError as error:
            return self._reject(fields["event_id"], error.reason)
        except Exception as error:  # never into the caller: bad data is counted, not raised
            return self._reject(fields["event_id"], f"{type(error).__name__}: {error}")
        self.metrics.add("accepted")
        self._send(data, attributes)
        return event.event_id

    def _reject(self, event_id: object, reason: str) -> uuid.UUID:
        self.metrics.add("rejected")
        log.warning("producer.event_rejected", extra={"reason": reason})
        if self.settings.strict:
            raise ValueError(reason)
        try:
            return event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id))
        except ValueError:
            return uuid.uuid4()

    def _send(self, data: bytes, attributes: dict[str, str]) -> None:
        size = len(data)
        with self._lock:
            admit = (
                self._transport_ok
                and not self._closed
                and self._in_flight < self.settings.max_in_flight_messages
                and self._in_flight_bytes + size <= self.settings.max_in_flight_bytes
            )
            if admit:
                self._in_flight += 1
                self._in_flight_bytes += size
        if not admit:
            self._spool_later(data, attributes)
            return
        try:
            future = self._publisher.publish(self._topic, data, **attributes)
        except Exception as error:  # a stopped or broken client: keep the message
            self._settled(size)
            self._publish_failed(error)
            self._spool_later(data, attributes)
            return
        future.add_done_callback(lambda f: self._on_done(f, data, attributes, size))

    def _on_done(self, future: Any, data: bytes, attributes: dict[str, str], size: int) -> None:
        self._settled(size)
        error = future.exception()
        if error is None:
            self.metrics.add("published")
            return
        self._publish_failed(error)
        self._spool_later(data, attributes)

    def _settled(self, size: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self._in_flight_bytes -= size

    def _publish_failed(self, error: BaseException) -> None:
        with self._lock:
            was_ok, self._transport_ok = self._transport_ok, False
        if was_ok:
            log.warning(
                "producer.pubsub_unavailable_spooling",
                extra={"error": f"{type(error).__name__}: {error}"[:300]},
            )
        self._wake_replayer.set()

    def _spool_later(self, data: bytes, attributes: dict[str, str]) -> None:
        if len(self._pending) >= self.settings.spool_queue_max_messages:
            self.metrics.add("dropped")
            log.error("producer.spool_queue_full_dropped")
            return
        self._pending.append((data, attributes))
        self._wake_writer.set()

    # -- background: spool writer and replayer --

    def _write_loop(self) -> None:
        interval_s = self.settings.spool_fsync_interval_ms / 1000
        while True:
            self._wake_writer.wait(interval_s)
            self._wake_writer.clear()
            self._drain_pending()
            if self._stop.is_set() and not self._pending:
                return

    def _drain_pending(self) -> None:
        lines: list[bytes] = []
        while self._pending and len(lines) < 10_000:
            data, attributes = self._pending.popleft()
            lines.append(encode_line(data, attributes))
        if not lines:
            return
        written, dropped = self._spool.append(lines)
        self.metrics.add("spooled", written)
        if dropped:
            self.metrics.add("dropped", dropped)
            log.error(
                "producer.spool_full_dropped",
                extra={"dropped": dropped, "cap_bytes": self.settings.spool_max_bytes},
            )
        self._wake_replayer.set()
        if self._pending:
            self._wake_writer.set()

    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            self._wake_replayer.wait(self.settings.replay_interval_s)
            self._wake_replayer.clear()
            if self._stop.is_set():
                return
            try:
                self._replay_once()
            except Exception:  # keep the thread alive; the next round retries
                log.exception("producer.replay_failed")

    def _replay_once(self) -> None:
        """Publish sealed spool segments, deleting each one only after all of it succeeded."""
        if self._spool.is_empty():
            if not self._transport_ok:
                with self._lock:
                    self._transport_ok = True  # nothing to prove it down; try again
            return
        self._spool.seal()
        for segment in self._spool.sealed_segments():
            messages, corrupt = self._spool.read(segment)
            if corrupt:
                self.metrics.add("corrupt_spool_lines", corrupt)
                log.error(
                    "producer.spool_corrupt_lines",
                    extra={"segment": segment.name, "lines": corrupt},
                )
            if not self._publish_all(messages):
                return
            self._spool.remove(segment)
            self.metrics.add("replayed", len(messages))
            log.info(
                "producer.spool_replayed",
                extra={"segment": segment.name, "messages": len(messages)},
            )
        with self._lock:
            if not self._transport_ok:
                log.info("producer.pubsub_available_again")
            self._transport_ok = True

    def _publish_all(self, messages: list[Message]) -> bool:
        for start in range(0, len(messages), REPLAY_CHUNK):
            if self._stop.is_set():
                return False
            futures = [
                self._publisher.publish(self._topic, data, **attributes)
                for data, attributes in messages[start : start + REPLAY_CHUNK]
            ]
            try:
                for future in futures:
                    future.result(timeout=self.settings.publish_timeout_s + 5)
            except Exception as error:
                self._publish_failed(error)
                self._renew_publisher()
                return False
        return True

    def _renew_publisher(self) -> None:
        """A fresh client (and channel) so that recovery is not held back by gRPC backoff."""
        old, self._publisher = self._publisher, publisher_client(self.settings)
        threading.Thread(target=_stop_quietly, args=(old,), daemon=True).start()

    # -- lifecycle --

    def stats(self) -> dict[str, int]:
        """Counters plus what is in memory and on disk right now."""
        with self._lock:
            in_flight, in_flight_bytes = self._in_flight, self._in_flight_bytes
        return {
            **self.metrics.snapshot(),
            "in_flight": in_flight,
            "in_flight_bytes": in_flight_bytes,
            "spool_queue": len(self._pending),
            "spool_bytes": self._spool.size_bytes,
        }

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted is published; False if that took past ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._in_flight == 0
            if idle and not self._pending and self._spool.is_empty():
                return True
            self._wake_writer.set()
            self._wake_replayer.set()
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush within ``timeout``; whatever is still unpublished stays in the spool."""
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake_replayer.set()
        self._replayer.join(timeout=timeout)
        _stop_quietly(self._publisher)  # failed batches come back through _on_done to the spool
        self._wake_writer.set()
        self._writer.join(timeout=timeout)
        self._drain_pending()
        self._spool.close()
        log.info("producer.closed", extra=self.stats())

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_quietly(client: PublisherClient) -> None:
    try:
        client.stop()
    except Exception as error:
        log.debug("producer.client_stop_failed", extra={"error": str(error)})


def _close_at_exit(producer: UsageProducer) -> None:
    ref = weakref.ref(producer)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close(timeout=5.0)

    atexit.register(close)
