"""biz2bricks-producer: fire-and-forget usage events for the AI service.

Importing this package never imports SQLAlchemy or asyncpg.
"""

from __future__ import annotations

from biz2bricks_producer.metrics import ProducerMetrics
from biz2bricks_producer.producer import UsageProducer
from biz2bricks_producer.settings import ProducerSettings

__all__ = ["ProducerMetrics", "ProducerSettings", "UsageProducer"]
