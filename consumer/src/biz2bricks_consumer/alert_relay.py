"""Relays usage alerts written by batch transactions to the Pub/Sub alerts topic (outbox).

Each round locks up to ``ROUND_SIZE`` unpublished rows (``FOR UPDATE SKIP LOCKED``: replicas
take different rows), publishes them, and sets ``published_at`` in the same transaction only
after every publish succeeded. A failure rolls back and the rows are retried later: delivery is
at least once, receivers dedupe on the ``alert_id`` attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1 import PublisherClient

from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_core.alerts import MARK_PUBLISHED, PENDING_ALERTS, alert_message
from biz2bricks_core.database import DATABASE_DOWN_ERRORS, DatabaseManager

log = logging.getLogger(__name__)

ROUND_SIZE: Final = 100
PUBLISH_TIMEOUT_S: Final = 30.0
# Failures a later round can fix: the database or Pub/Sub unreachable, the topic missing.
RELAY_RETRYABLE_ERRORS: Final = (*DATABASE_DOWN_ERRORS, gexc.GoogleAPICallError, TimeoutError)


class AlertRelay:
    """Publishes unpublished ``usage_alerts`` rows; woken after commits, and polls."""

    def __init__(
        self,
        settings: ConsumerSettings,
        db: DatabaseManager,
        metrics: ConsumerMetrics,
        publisher: Any | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._metrics = metrics
        self._publisher = publisher
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New alerts were committed: relay them now."""
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled: after each notify, and every ``alert_poll_s``.

        Unreachable database or Pub/Sub: logged, counted, retried with backoff. Anything else is
        a bug and propagates (the worker's supervisor logs it and restarts this loop).
        """
        backoff_s = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.alert_poll_s)
            self._wake.clear()
            try:
                await self._relay_all()
            except RELAY_RETRYABLE_ERRORS as error:
                self._failed(error, "consumer.alert_relay_failed")
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
                self._wake.set()  # try again after the backoff
            except Exception:
                self._metrics.alert_relay_failures.inc()
                raise
            else:
                backoff_s = 0.5

    async def drain(self, timeout_s: float) -> bool:
        """Relay everything pending within ``timeout_s`` (before the worker exits).

        Never raises: what cannot leave now stays unpublished for the next replica's relay.
        """
        try:
            await asyncio.wait_for(self._relay_all(), timeout=timeout_s)
        except TimeoutError:
            self._metrics.alert_relay_failures.inc()
            log.warning("consumer.alert_relay_drain_timeout", extra={"timeout_s": timeout_s})
            return False
        except RELAY_RETRYABLE_ERRORS as error:
            self._failed(error, "consumer.alert_relay_failed")
            return False
        except Exception as error:  # a bug: surfaced with its traceback, the exit goes on
            self._failed(error, "consumer.alert_relay_crashed", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Stop the publisher client, if one was made."""
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher.transport.close()
            self._publisher = None

    async def _relay_all(self) -> None:
        while await self.relay_round() == ROUND_SIZE:
            pass

    def _failed(self, error: BaseException, event: str, *, exc_info: bool = False) -> None:
        self._metrics.alert_relay_failures.inc()
        extra = {"error": f"{type(error).__name__}: {error}", "topic": self._topic}
        if isinstance(error, gexc.NotFound):
            extra["hint"] = "create the alerts topic with: biz2bricks-consumer setup"
        log.warning(event, extra=extra, exc_info=exc_info)

    @property
    def _topic(self) -> str:
        return self._settings.alerts_topic_path

    async def relay_round(self) -> int:
        """Publish up to ROUND_SIZE pending alerts and mark them; the number published."""
        async with self._db.driver() as conn, conn.transaction():
            rows = await conn.fetch(PENDING_ALERTS, ROUND_SIZE)
            if not rows:
                return 0
            if self._publisher is None:
                self._publisher = PublisherClient()
            futures = [
                asyncio.wrap_future(self._publisher.publish(self._topic, data, **attributes))
                for data, attributes in (alert_message(row) for row in rows)
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=PUBLISH_TIMEOUT_S)
            await conn.execute(MARK_PUBLISHED, [row["id"] for row in rows])
        self._metrics.alerts_published.inc(len(rows))
        log.info("consumer.alerts_published", extra={"alerts": len(rows), "topic": self._topic})
        return len(rows)
