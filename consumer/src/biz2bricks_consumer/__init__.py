"""biz2bricks-consumer: the worker that turns usage messages into rows and counters."""

from __future__ import annotations

from biz2bricks_consumer.batching import Batch, InboundMessage, Reject, build_batch
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pubsub import PubSubSource, ensure_topic_and_subscription
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker
from biz2bricks_consumer.writer import BatchWriter, WriteResult

__all__ = [
    "Batch",
    "BatchWriter",
    "ConsumerMetrics",
    "ConsumerSettings",
    "InboundMessage",
    "PubSubSource",
    "Reject",
    "Worker",
    "WriteResult",
    "build_batch",
    "ensure_topic_and_subscription",
]
