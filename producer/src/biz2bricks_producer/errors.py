"""Exceptions of the producer library (none ever reaches a record_tokens caller)."""

from __future__ import annotations

from biz2bricks_core.errors import Biz2BricksError, TransientError


class ProducerError(Biz2BricksError):
    """Root of the producer's own exceptions."""


class PubSubUnavailableError(ProducerError, TransientError):
    """Pub/Sub failed recently; batches go to the spool until the replayer gets through."""
