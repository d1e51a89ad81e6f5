"""UsageProducer: record usage without ever blocking or failing the caller.

``record_tokens`` validates and encodes the event and appends it to a bounded in-memory queue;
that is all the caller pays for. A sender thread publishes the queue in batches with one
Publish RPC each (no per-message future: fire-and-forget needs only the batch's outcome).
Past the memory cap, or while Pub/Sub fails (no credentials included), messages go to a spool
queue that a writer thread appends to disk. A replayer thread publishes the spool once Pub/Sub
answers again, and on the next start after a crash.

Every accepted message is, at any moment, in exactly one place: the queue, a batch in flight
(owned by the sender until it settles), the spool queue, or the spool. ``close`` and the SIGTERM
hook take over the first three and write them to the spool when Pub/Sub does not take them in
time. Fork, SIGTERM and exit hooks: ``_lifecycle``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.event_ids import new_event_id
from biz2bricks_core.events import encode_event, validate_event
from biz2bricks_producer import _lifecycle
from biz2bricks_producer._replay import Replayer
from biz2bricks_producer._transport import Transport
from biz2bricks_producer.errors import PubSubUnavailableError
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message, Spool, SpoolClosedError, encode_line
from biz2bricks_producer.usage_adapters import token_fields

log = logging.getLogger("biz2bricks_producer")


class UsageProducer:
    """Fire-and-forget publisher of usage events; see the module docstring."""

    def __init__(self, settings: ProducerSettings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = ProducerSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        self.metrics = ProducerMetrics()
        self._spool = self._claim_spool()
        self._start()
        self._chain_pending = not _lifecycle.register(self)
        if not self._spool.is_empty():
            log.info(
                "producer.spool_found",
                extra={"dir": str(self._spool.dir), "bytes": self._spool.size_bytes},
            )

    def _claim_spool(self) -> Spool:
        s = self.settings
        return Spool(s.spool_dir, s.spool_max_bytes, s.spool_segment_bytes)

    def _start(self, *, threads: bool = True) -> None:
        """What one process owns: locks, memory, client and threads (again in a forked child)."""
        self._lock = threading.Lock()
        self._transport = Transport(self.settings)
        self._queue: collections.deque[Message] = collections.deque()  # to publish
        self._queued_bytes = 0
        self._in_flight: dict[int, list[Message]] = {}  # batches the sender publishes now
        self._batch_seq = 0
        self._sending = 0  # messages in _in_flight
        self._transport_ok = True
        self._pending: collections.deque[Message] = collections.deque()  # to spool
        self._wake_sender = threading.Event()
        self._wake_writer = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._draining = False  # after SIGTERM or close: new events go straight to the spool
        self._writer = threading.Thread(target=self._write_loop, name="usage-spool", daemon=True)
        self._replay = Replayer(
            self._spool,
            self._transport,
            self.metrics,
            self._stop,
            lambda: 0.05 if self._draining else self.settings.replay_interval_s,
            self._publish_failed,
            self._reachable,
        )
        self._sender = threading.Thread(target=self._send_loop, name="usage-send", daemon=True)
        if threads:
            self._writer.start()
            self._replay.thread.start()
            self._sender.start()

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
        reservation_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record one LLM call's tokens; returns its event_id (the idempotency key).

        A retry with the same ``event_id`` is counted once. ``reservation_id`` (from
        ``UsageService.reserve_tokens``) settles that hold when the event is stored. Invalid
        arguments are logged, counted as rejected and dropped (``ValueError`` with ``strict``).
        """
        fields = {
            "event_id": event_id if event_id is not None else new_event_id(),
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
            "reservation_id": reservation_id,
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
                and not self._draining
                and len(self._queue) + self._sending < self.settings.max_in_flight_messages
                and self._queued_bytes + size <= self.settings.max_in_flight_bytes
            )
            if admit:
                self._queue.append((data, attributes))
                self._queued_bytes += size
        if admit:
            if len(self._queue) >= self.settings.batch_max_messages:
                self._wake_sender.set()
        elif self._draining:
            self._write_spool([(data, attributes)], sync=False)  # the process may end any moment
        else:
            self._spool_later(data, attributes)
        if self._chain_pending:  # a forked child: hook SIGTERM once on its main thread
            self._chain_pending = not _lifecycle.chain_sigterm()

    # -- background: sender --

    def _send_loop(self) -> None:
        latency_s = self.settings.batch_max_latency_ms / 1000
        while True:
            self._wake_sender.wait(latency_s)
            self._wake_sender.clear()
            while self._queue:
                key, batch = self._take_batch()
                self._send_batch(key, batch)
            if self._stop.is_set() and not self._queue:
                return

    def _take_batch(self) -> tuple[int, list[Message]]:
        batch: list[Message] = []
        size = 0
        with self._lock:
            while self._queue and len(batch) < self.settings.batch_max_messages:
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
            if not self._transport_ok:
                raise PubSubUnavailableError("Pub/Sub failed recently; spooling")
            self._transport.publish(batch)
        except Exception as exc:
            error = exc
        with self._lock:
            owned = self._in_flight.pop(key, None) is not None
            if owned:
                self._sending -= len(batch)
                if error is not None:
                    self._pending.extend(batch)  # handed over under the lock: never in between
        if not owned:
            return  # close() or the SIGTERM hook spooled this batch while it was in flight
        if error is None:
            self.metrics.add("published", len(batch))
            return
        self._publish_failed(error)
        if self._draining or len(self._pending) >= self.settings.spool_queue_max_messages:
            self._drain_pending()
        else:
            self._wake_writer.set()

    def _publish_failed(self, error: BaseException) -> None:
        self.metrics.add("publish_errors")
        with self._lock:
            was_ok, self._transport_ok = self._transport_ok, False
        if was_ok:
            log.warning(
                "producer.pubsub_unavailable_spooling",
                extra={"error": f"{type(error).__name__}: {error}"[:500]},
            )
        self._replay.wake.set()

    # -- background: spool writer and replayer --

    def _spool_later(self, data: bytes, attributes: dict[str, str]) -> None:
        self._pending.append((data, attributes))
        if len(self._pending) >= self.settings.spool_queue_max_messages:
            # The writer thread is behind: this thread writes a chunk itself (one fsync for
            # thousands of messages) rather than let memory grow or drop what it accepted.
            self._drain_pending()
        else:
            self._wake_writer.set()

    def _write_loop(self) -> None:
        interval_s = self.settings.spool_fsync_interval_ms / 1000
        while True:
            self._wake_writer.wait(interval_s)
            self._wake_writer.clear()
            self._drain_pending()
            if self._stop.is_set() and not self._pending:
                return

    def _drain_pending(self) -> None:
        while self._pending:
            chunk: list[Message] = []
            while self._pending and len(chunk) < 10_000:
                chunk.append(self._pending.popleft())
            if chunk:
                self._write_spool(chunk, sync=True)

    def _write_spool(self, messages: list[Message], *, sync: bool) -> None:
        lines = [encode_line(data, attributes) for data, attributes in messages]
        try:
            written, dropped = self._spool.append(lines, sync=sync)
        except SpoolClosedError:
            # Recorded after close(): a slot of its own, so that the next process replays it.
            late = self._claim_spool()
            try:
                written, dropped = late.append(lines)
            finally:
                late.close()
        self.metrics.add("spooled", written)
        if dropped:
            self.metrics.add("dropped", dropped)
            log.error(
                "producer.spool_full_dropped",
                extra={"dropped": dropped, "cap_bytes": self.settings.spool_max_bytes},
            )
        self._replay.wake.set()

    def _reachable(self, proved: bool) -> None:
        with self._lock:
            if proved and not self._transport_ok:
                log.info("producer.pubsub_available_again")
            self._transport_ok = True  # unproved: nothing left to show it down; try again

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
        while True:
            with self._lock:
                idle = not self._queue and self._sending == 0
            if idle and not self._pending and self._spool.is_empty():
                return True
            if time.monotonic() >= deadline:
                return False
            self._wake_sender.set()
            self._wake_writer.set()
            self._replay.wake.set()
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        """Publish within ``timeout``; what is not published by then is written to the spool.

        Returns within ``timeout`` (plus one spool write) and loses nothing it accepted: the
        next producer on the same ``USAGE_SPOOL_DIR`` replays the spool. Events recorded after
        ``close`` are written to the spool directly.
        """
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self.flush(max(0.0, timeout - min(1.0, timeout / 4)))  # keep time to write the rest
        self._settle(time.monotonic())
        with self._lock:
            self._closed = True
        self._stop.set()
        for thread, wake in (
            (self._replay.thread, self._replay.wake),
            (self._sender, self._wake_sender),
            (self._writer, self._wake_writer),
        ):
            wake.set()
            if thread.is_alive():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._drain_pending()
        self._spool.close()
        self._transport.close()
        log.info("producer.closed", extra=self.stats())

    def _settle(self, deadline: float) -> None:
        """Publish what is in memory until ``deadline``, then write what is left to the spool.

        From here on events go straight to the spool (``_draining``), and the replayer
        publishes the spool at once rather than every ``replay_interval_s``.
        """
        with self._lock:
            self._draining = True
        self._replay.wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._queue) or self._sending > 0
                reachable = self._transport_ok
            if not busy or not reachable:
                break
            self._wake_sender.set()
            time.sleep(0.005)
        with self._lock:
            self._pending.extend(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            for batch in self._in_flight.values():  # the sender will find them gone
                self._pending.extend(batch)
            self._in_flight.clear()
            self._sending = 0
        self._drain_pending()

    def _on_sigterm(self) -> None:
        """The SIGTERM hook: publish or spool what is in memory within the exit bound."""
        if not self._closed:
            self._settle(time.monotonic() + self.settings.exit_flush_timeout_s)

    def _after_fork_in_child(self) -> None:
        """This process is a fork: the parent publishes what it accepted; start afresh here."""
        closed = self._closed
        _lifecycle.keep_inherited_client(self._transport)
        self._spool.abandon_after_fork()
        self.metrics.reset_after_fork()
        if closed:
            self._start(threads=False)
            self._closed = self._draining = True
            return
        self._spool = self._claim_spool()
        self._start()
        self._chain_pending = True

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
