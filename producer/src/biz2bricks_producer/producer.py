"""UsageProducer: record usage without ever blocking or failing the caller.

``record_tokens`` validates and encodes the event and appends it to a bounded in-memory queue;
that is all the caller pays for. A sender thread publishes the queue in batches with one
Publish RPC each (no per-message future: fire-and-forget needs only the batch's outcome).
Past the memory cap, or while Pub/Sub fails, messages go to a spool queue that a writer thread
appends to disk. A replayer thread publishes the spool once Pub/Sub answers again, and on the
next start after a crash.
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
from google.pubsub_v1.services.publisher.client import PublisherClient as GapicPublisherClient
from google.pubsub_v1.types import PublishRequest, PubsubMessage

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.events import encode_event, validate_event
from biz2bricks_producer.errors import PubSubUnavailableError
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message, Spool, encode_line
from biz2bricks_producer.usage_adapters import token_fields

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
PUBSUB_MESSAGE = PubsubMessage.pb()  # the raw protobuf class: ~6x cheaper to build per message


def publisher_client() -> PublisherClient:
    """The Pub/Sub client (it honours PUBSUB_EMULATOR_HOST); only its Publish RPC is used."""
    return PublisherClient()


def publish_retry(settings: ProducerSettings) -> Retry:
    """Retries of one batch's Publish RPC before its messages are handed to the spool."""
    return Retry(
        predicate=if_exception_type(*RETRYABLE_PUBLISH_ERRORS),
        initial=0.1,
        maximum=2.0,
        multiplier=2.0,
        timeout=settings.publish_timeout_s,
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
        self._publisher = publisher_client()
        self._retry = publish_retry(settings)
        self._lock = threading.Lock()
        self._queue: collections.deque[Message] = collections.deque()  # to publish
        self._queued_bytes = 0
        self._sending = 0  # messages taken by the sender, not yet settled
        self._transport_ok = True
        self._pending: collections.deque[Message] = collections.deque()  # to spool
        self._wake_sender = threading.Event()
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
        self._sender = threading.Thread(target=self._send_loop, name="usage-send", daemon=True)
        self._writer.start()
        self._replayer.start()
        self._sender.start()
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
        cache_write_1h_tokens: int = 0,
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
            "cache_write_1h_tokens": cache_write_1h_tokens,
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
        self._send(data, attributes)
        return event.event_id

    def record_usage(
        self,
        *,
        organization_id: uuid.UUID | str,
        provider: str,
        model: str,
        usage: Any,
        **fields: Any,
    ) -> uuid.UUID:
        """Record one LLM call from its provider's usage object (or its dict).

        OpenAI Chat and Responses, Anthropic Messages, Bedrock Converse and Gemini usage are
        mapped onto the contract (see usage_adapters: Anthropic's input excludes cache reads
        and writes, Gemini's thinking tokens are output). ``fields`` are the other keywords
        of ``record_tokens`` (user_id, operation, request_id, occurred_at, metadata, ...).
        """
        try:
            tokens = token_fields(usage)
        except InvalidEventError as error:
            return self._reject(fields.get("event_id") or uuid.uuid4(), error.reason)
        except Exception as error:  # never into the caller: bad data is counted, not raised
            reason = f"usage: {type(error).__name__}: {error}"
            return self._reject(fields.get("event_id") or uuid.uuid4(), reason)
        return self.record_tokens(
            organization_id=organization_id, provider=provider, model=model, **tokens, **fields
        )

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
            self.metrics.accepted += 1  # only ever written here, under this lock
            admit = (
                self._transport_ok
                and not self._closed
                and len(self._queue) + self._sending < self.settings.max_in_flight_messages
                and self._queued_bytes + size <= self.settings.max_in_flight_bytes
            )
            if admit:
                self._queue.append((data, attributes))
                self._queued_bytes += size
        if not admit:
            self._spool_later(data, attributes)
        elif len(self._queue) >= self.settings.batch_max_messages:
            self._wake_sender.set()

    def _send_loop(self) -> None:
        latency_s = self.settings.batch_max_latency_ms / 1000
        while True:
            self._wake_sender.wait(latency_s)
            self._wake_sender.clear()
            while self._queue:
                self._send_batch(self._take_batch())
            if self._stop.is_set() and not self._queue:
                return

    def _take_batch(self) -> list[Message]:
        batch: list[Message] = []
        size = 0
        with self._lock:
            while self._queue and len(batch) < self.settings.batch_max_messages:
                message = self._queue.popleft()
                batch.append(message)
                size += len(message[0])
            self._queued_bytes -= size
            self._sending += len(batch)
        return batch

    def _send_batch(self, batch: list[Message]) -> None:
        try:
            if not self._transport_ok:
                raise PubSubUnavailableError("Pub/Sub failed recently; spooling")
            self._publish_rpc(batch)
        except Exception as error:
            self._publish_failed(error)
            for data, attributes in batch:
                self._spool_later(data, attributes)
        else:
            self.metrics.add("published", len(batch))
        finally:
            with self._lock:
                self._sending -= len(batch)

    def _publish_rpc(self, batch: list[Message]) -> None:
        """One Publish RPC for the whole batch, with the client's retry policy."""
        request = PublishRequest.pb()(
            topic=self._topic,
            messages=[PUBSUB_MESSAGE(data=d, attributes=a) for d, a in batch],
        )
        GapicPublisherClient.publish(
            self._publisher,
            request=PublishRequest.wrap(request),
            retry=self._retry,
            timeout=min(self.settings.publish_timeout_s, 10.0),
        )

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
        self._pending.append((data, attributes))
        if len(self._pending) >= self.settings.spool_queue_max_messages:
            # The writer thread is behind: this thread writes a chunk itself (one fsync for
            # thousands of messages) rather than let memory grow or drop what it accepted.
            self._drain_pending()
        else:
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
            try:
                self._publish_rpc(messages[start : start + REPLAY_CHUNK])
            except Exception as error:
                self._publish_failed(error)
                self._renew_publisher()
                return False
        return True

    def _renew_publisher(self) -> None:
        """A fresh client (and channel) so that recovery is not held back by gRPC backoff."""
        old, self._publisher = self._publisher, publisher_client()
        threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()

    # -- lifecycle --

    def stats(self) -> dict[str, int]:
        """Counters plus what is in memory and on disk right now."""
        with self._lock:
            in_flight = len(self._queue) + self._sending
            in_flight_bytes = self._queued_bytes
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
                idle = not self._queue and self._sending == 0
            if idle and not self._pending and self._spool.is_empty():
                return True
            self._wake_sender.set()
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
        self._wake_sender.set()
        self._sender.join(timeout=timeout)  # sends what is queued, or spools it on failure
        _close_quietly(self._publisher)
        self._wake_writer.set()
        self._writer.join(timeout=timeout)
        self._drain_pending()
        self._spool.close()
        log.info("producer.closed", extra=self.stats())

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(client: PublisherClient) -> None:
    try:
        client.transport.close()
    except Exception as error:
        log.debug("producer.client_stop_failed", extra={"error": str(error)})


def _close_at_exit(producer: UsageProducer) -> None:
    ref = weakref.ref(producer)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close(timeout=5.0)

    atexit.register(close)
