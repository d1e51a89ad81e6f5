"""biz2bricks-consumer: the worker that turns usage messages into rows and counters.

The names load on first use, so that the console script can install its SIGTERM handler
before grpc, SQLAlchemy and pydantic are imported (seconds on a loaded machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_LAZY = {
    "Batch": "biz2bricks_consumer.batching",
    "InboundMessage": "biz2bricks_consumer.batching",
    "Reject": "biz2bricks_consumer.batching",
    "build_batch": "biz2bricks_consumer.batching",
    "ConsumerMetrics": "biz2bricks_consumer.metrics",
    "PubSubSource": "biz2bricks_consumer.pubsub",
    "ensure_topic_and_subscription": "biz2bricks_consumer.pubsub",
    "ConsumerSettings": "biz2bricks_consumer.settings",
    "Worker": "biz2bricks_consumer.worker",
    "BatchWriter": "biz2bricks_consumer.writer",
    "WriteResult": "biz2bricks_consumer.writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'biz2bricks_consumer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
