"""Prometheus metrics of one worker, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    """The worker's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pulled = Counter("usage_consumer_messages_pulled", "Messages pulled", registry=r)
        self.inserted = Counter("usage_consumer_events_inserted", "Events inserted", registry=r)
        self.duplicates = Counter(
            "usage_consumer_duplicates", "Events already stored (redeliveries)", registry=r
        )
        self.rejects = Counter(
            "usage_consumer_rejects", "Messages rejected", ["reason"], registry=r
        )
        self.conflicting_duplicates = Counter(
            "usage_consumer_conflicting_duplicates",
            "Messages reusing a stored event_id with other content (kept as rejects)",
            registry=r,
        )
        self.isolated = Counter(
            "usage_consumer_isolated",
            "Messages the database refused, found by bisecting their batch (kept as rejects)",
            registry=r,
        )
        self.task_restarts = Counter(
            "usage_consumer_task_restarts",
            "Long-running worker tasks restarted after dying",
            ["task"],
            registry=r,
        )
        self.unpriced = Counter(
            "usage_consumer_events_unpriced",
            "Events stored without a cost (no price row applies); the log names the model",
            registry=r,
        )
        self.acked = Counter("usage_consumer_messages_acked", "Messages acked", registry=r)
        self.commit_retries = Counter(
            "usage_consumer_commit_retries", "Batch commits retried", registry=r
        )
        self.batch_size = Histogram(
            "usage_consumer_batch_size",
            "Messages per batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "usage_consumer_batch_seconds",
            "Decode-to-commit time of a batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.oldest_message_age = Gauge(
            "usage_consumer_oldest_message_age_seconds",
            "Age of the oldest message in the last committed batch",
            registry=r,
        )
        self.holds_settled = Counter(
            "usage_consumer_holds_settled", "Token holds settled by their events", registry=r
        )
        self.alerts_created = Counter(
            "usage_consumer_alerts_created", "Usage alert rows written", registry=r
        )
        self.alerts_published = Counter(
            "usage_consumer_alerts_published", "Usage alerts published to Pub/Sub", registry=r
        )
        self.alert_relay_failures = Counter(
            "usage_consumer_alert_relay_failures",
            "Alert relay rounds that failed (retried later)",
            registry=r,
        )
        self.database_up = Gauge(
            "usage_consumer_database_up", "1 when the last commit succeeded", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (tests and the demo read counters this way)."""
        found = self.registry.get_sample_value(name, labels or None)
        return 0.0 if found is None else found

    def summary(self) -> dict[str, int]:
        """Counters of this run as integers (the worker logs them when it stops)."""
        counters = {
            "pulled": self.value("usage_consumer_messages_pulled_total"),
            "inserted": self.value("usage_consumer_events_inserted_total"),
            "duplicates": self.value("usage_consumer_duplicates_total"),
            "conflicting_duplicates": self.value("usage_consumer_conflicting_duplicates_total"),
            "isolated": self.value("usage_consumer_isolated_total"),
            "acked": self.value("usage_consumer_messages_acked_total"),
            "commit_retries": self.value("usage_consumer_commit_retries_total"),
            "holds_settled": self.value("usage_consumer_holds_settled_total"),
            "alerts_created": self.value("usage_consumer_alerts_created_total"),
            "alerts_published": self.value("usage_consumer_alerts_published_total"),
        }
        return {name: int(value) for name, value in counters.items()}
