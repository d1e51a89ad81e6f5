"""The Pub/Sub side of the producer: one client made at first use, one Publish RPC per batch."""

from __future__ import annotations

import logging
import threading

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud.pubsub_v1 import PublisherClient
from google.pubsub_v1.services.publisher.client import PublisherClient as GapicPublisherClient
from google.pubsub_v1.types import PublishRequest, PubsubMessage

from biz2bricks_producer.settings import ProducerSettings
from biz2bricks_producer.spool import Message

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


class Transport:
    """Publishes batches; the client is made on the sender's or replayer's thread at first use.

    Never in the producer's constructor: missing credentials then fail a publish (logged,
    counted, spooled) instead of the application's start-up, and a producer created before
    fork hands no gRPC channel down to the child.
    """

    def __init__(self, settings: ProducerSettings) -> None:
        self._topic = settings.topic_path
        self._retry = publish_retry(settings)
        self._timeout_s = min(settings.publish_timeout_s, 10.0)
        self._lock = threading.Lock()
        self._client: PublisherClient | None = None

    def publish(self, batch: list[Message]) -> None:
        """One Publish RPC for the whole batch, with the client's retry policy."""
        request = PublishRequest.pb()(
            topic=self._topic,
            messages=[PUBSUB_MESSAGE(data=d, attributes=a) for d, a in batch],
        )
        GapicPublisherClient.publish(
            self._get_client(),
            request=PublishRequest.wrap(request),
            retry=self._retry,
            timeout=self._timeout_s,
        )

    def _get_client(self) -> PublisherClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = publisher_client()
                client = self._client
        return client

    def renew(self) -> None:
        """A fresh client (and channel) next time, so recovery is not held back by gRPC backoff."""
        with self._lock:
            old, self._client = self._client, None
        _close_in_background(old)

    def close(self) -> None:
        """Close the channel (in the background: a publish in flight may still hold it)."""
        with self._lock:
            old, self._client = self._client, None
        _close_in_background(old)


def _close_in_background(client: PublisherClient | None) -> None:
    if client is not None:
        threading.Thread(target=_close_quietly, args=(client,), daemon=True).start()


def _close_quietly(client: PublisherClient) -> None:
    try:
        client.transport.close()
    except Exception as error:
        log.debug("producer.client_stop_failed", extra={"error": str(error)})
