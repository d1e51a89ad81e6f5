"""The producer's counters: plain integers in-process, exported to Prometheus on request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

_NOT_COUNTERS = frozenset({"_lock", "rejected_by_reason"})


def reason_kind(reason: str) -> str:
    """A reject reason's kind, a bounded label: the field it names, else its error type."""
    head = reason.split(":", 1)[0].strip()
    return head if head.isidentifier() and len(head) <= 40 else "other"


@dataclass
class ProducerMetrics:
    """What happened to the events handed to ``record_tokens``."""

    accepted: int = 0  # valid events taken in
    published: int = 0  # confirmed by Pub/Sub on the first try
    spooled: int = 0  # written to the local spool (outage or in-flight cap)
    replayed: int = 0  # published later from the spool
    dropped: int = 0  # lost to the spool size cap (logged)
    publish_errors: int = 0  # Publish calls that failed (Pub/Sub down, no credentials, ...)
    rejected: int = 0  # invalid arguments, never accepted
    corrupt_spool_lines: int = 0
    # ``rejected`` per reason kind: the field the reason names ("user_id", "input_tokens").
    rejected_by_reason: dict[str, int] = field(default_factory=dict, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Add to a counter (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def reject(self, reason: str) -> None:
        """Count a rejected event, in total and under its reason kind."""
        kind = reason_kind(reason)
        with self._lock:
            self.rejected += 1
            self.rejected_by_reason[kind] = self.rejected_by_reason.get(kind, 0) + 1

    def reset_after_fork(self) -> None:
        """A forked child counts its own events from zero (the parent keeps its counts)."""
        self._lock = threading.Lock()
        for f in fields(self):
            if f.name not in _NOT_COUNTERS:
                setattr(self, f.name, 0)
        self.rejected_by_reason = {}

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict."""
        with self._lock:
            return {
                f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_COUNTERS
            }

    def rejects(self) -> dict[str, int]:
        """Rejected events per reason kind."""
        with self._lock:
            return dict(self.rejected_by_reason)

    def register_prometheus(self, registry: Any = None, prefix: str = "usage_producer") -> None:
        """Expose the counters through prometheus-client (optional dependency)."""
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> Iterator[CounterMetricFamily]:
                for name, value in metrics.snapshot().items():
                    yield CounterMetricFamily(f"{prefix}_{name}", f"Usage events {name}", value)
                by_reason = CounterMetricFamily(
                    f"{prefix}_rejected_by_reason",
                    "Usage events rejected, per the field the reason names",
                    labels=["reason"],
                )
                for kind, count in metrics.rejects().items():
                    by_reason.add_metric([kind], count)
                yield by_reason

        (registry or REGISTRY).register(_Collector())
