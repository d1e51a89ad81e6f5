"""UsageProducer: record usage without ever blocking or failing the caller.

``record_tokens`` validates and encodes the event and hands it to the process's pipeline
(``_pipeline``): the outbox's bounded queue, which a sender thread publishes in batches, or,
past the memory cap or while Pub/Sub fails (no credentials included), the spool writer's queue,
which a writer thread appends to disk. A replayer thread publishes the spool once Pub/Sub
answers again, and on the next start after a crash.

``close``, SIGTERM and interpreter exit drain the pipeline: what Pub/Sub does not take in time
is written to the spool. Fork, SIGTERM and exit hooks: ``_lifecycle``, which calls the public
``before_fork``, ``after_fork_in_parent``, ``after_fork_in_child`` and ``on_sigterm``.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.event_ids import new_event_id
from biz2bricks_core.events import encode_event, validate_event
from biz2bricks_producer import _lifecycle
from biz2bricks_producer._pipeline import Pipeline
from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Spool
from biz2bricks_producer.usage_adapters import usage_fields

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
        self._closed = False
        self._pipeline = Pipeline(settings, self.metrics, self._claim_spool(), self._claim_spool)
        self._pipeline.start()
        self._chain_pending = not _lifecycle.register(self)
        spool = self._pipeline.spool
        if not spool.is_empty():
            log.info(
                "producer.spool_found", extra={"dir": str(spool.dir), "bytes": spool.size_bytes}
            )

    def _claim_spool(self) -> Spool:
        s = self.settings
        return Spool(s.spool_dir, s.spool_max_bytes, s.spool_segment_bytes)

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
        processing: str | None = None,
        service_tier: str | None = None,
        speed: str | None = None,
        route: str | None = None,
        web_search_requests: int = 0,
    ) -> uuid.UUID:
        """Record one LLM call's tokens; returns its event_id (the idempotency key).

        A retry with the same ``event_id`` is counted once. ``reservation_id`` (from
        ``UsageService.reserve_tokens``) settles that hold when the event is stored. The
        price context selects the price: ``processing="batch"`` for a provider's batch API,
        ``service_tier`` (``"flex"``, ``"priority"``, ...), ``speed`` (``"fast"``), ``route``
        (a region such as Anthropic's ``inference_geo``, or a gateway route), and
        ``web_search_requests`` billed per request. Invalid arguments are logged, counted as
        rejected and dropped (``ValueError`` with ``strict``).
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
            "processing": processing,
            "service_tier": service_tier,
            "speed": speed,
            "route": route,
            "web_search_requests": web_search_requests,
        }
        try:
            event = validate_event(fields)
            data, attributes = encode_event(event)
        except InvalidEventError as error:
            return _reject(self, fields["event_id"], error.reason)
        except Exception as error:  # never into the caller: bad data is counted, not raised
            return _reject(self, fields["event_id"], f"{type(error).__name__}: {error}")
        self._pipeline.send((data, attributes))
        if self._chain_pending:  # a forked child: hook SIGTERM once on its main thread
            self._chain_pending = not _lifecycle.chain_sigterm()
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
        """Record one LLM call from its provider's usage object or whole response (or dict).

        OpenAI Chat and Responses, Anthropic Messages, Bedrock Converse and Gemini usage are
        mapped onto the contract (see usage_adapters: Anthropic's input excludes cache reads
        and writes, Gemini's thinking tokens are output), from any object shape; an unknown
        shape is a reject, never zero tokens. A whole response or batch result line also
        gives the price context (service tier, batch, web searches). ``fields`` are the other
        keywords of ``record_tokens`` (user_id, operation, request_id, occurred_at, metadata,
        processing, service_tier, ...); they win over what the response names; a None is
        not given (a wrapper forwarding its own defaults never erases what the response says:
        ``processing=None`` keeps the batch line's ``batch``).
        """
        try:
            tokens = usage_fields(usage)
        except InvalidEventError as error:
            return _reject(self, fields.get("event_id") or uuid.uuid4(), error.reason)
        except Exception as error:  # never into the caller: bad data is counted, not raised
            reason = f"usage: {type(error).__name__}: {error}"
            return _reject(self, fields.get("event_id") or uuid.uuid4(), reason)
        given = {k: v for k, v in fields.items() if v is not None}  # None: not given
        merged: dict[str, Any] = {**tokens, **given}
        return self.record_tokens(
            organization_id=organization_id, provider=provider, model=model, **merged
        )

    # -- state, flush, close --

    def stats(self) -> dict[str, int]:
        """Counters plus what is in memory and on disk right now."""
        in_flight, in_flight_bytes = self._pipeline.outbox.in_memory()
        return {
            **self.metrics.snapshot(),
            "in_flight": in_flight,
            "in_flight_bytes": in_flight_bytes,
            "spool_queue": self._pipeline.spool_writer.waiting,
            "spool_bytes": self._pipeline.spool.size_bytes,
        }

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted is published; False if that took past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._pipeline.idle():
                return True
            if time.monotonic() >= deadline:
                return False
            self._pipeline.wake_all()
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
        self._pipeline.drain(time.monotonic())
        self._closed = True
        self._pipeline.stop(deadline)
        log.info("producer.closed", extra=self.stats())

    # -- process hooks, called by _lifecycle (applications need not call them) --

    def on_sigterm(self) -> None:
        """Drain within ``exit_flush_timeout_s``: publish what is in memory, spool the rest.

        Events recorded afterwards are written straight to the spool.
        """
        if not self._closed:
            self._pipeline.drain(time.monotonic() + self.settings.exit_flush_timeout_s)

    def before_fork(self) -> None:
        """Hold the locks of the queue and the spool across fork(); see ``after_fork_*``."""
        self._pipeline.before_fork()

    def after_fork_in_parent(self) -> None:
        """Release what ``before_fork`` held; the parent carries on as before."""
        self._pipeline.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        """This process is a fork: the parent publishes what it accepted; start afresh here.

        The child drops the inherited queue, keeps the inherited client unused (its channel is
        the parent's), counts from zero, and claims its own spool slot and threads. A producer
        closed before fork stays closed: its events go to spool slots of their own.
        """
        old = self._pipeline
        _lifecycle.keep_inherited_client(old.transport)
        old.spool.abandon_after_fork()
        self.metrics.reset_after_fork()
        if self._closed:
            self._pipeline = Pipeline(self.settings, self.metrics, old.spool, self._claim_spool)
            self._pipeline.outbox.stop_accepting()
            return
        self._pipeline = Pipeline(
            self.settings, self.metrics, self._claim_spool(), self._claim_spool
        )
        self._pipeline.start()
        self._chain_pending = True

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reject(producer: UsageProducer, event_id: object, reason: str) -> uuid.UUID:
    """Count and log an event the caller's arguments made invalid; its id (``ValueError``
    instead with ``strict``)."""
    producer.metrics.reject(reason)
    log.warning(
        "producer.event_rejected: %s (event %s dropped; USAGE_PRODUCER_STRICT=1 raises)",
        reason,
        event_id,
        extra={"reason": reason, "event_id": str(event_id)},
    )
    if producer.settings.strict:
        raise ValueError(reason)
    try:
        return event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id))
    except ValueError:
        return uuid.uuid4()
