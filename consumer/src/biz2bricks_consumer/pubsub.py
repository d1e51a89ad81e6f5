"""The Pub/Sub edge of the worker: unary pull, batched ack, lease extension, admin setup.

Unary pull with up to 1,000 messages per call, acks batched per committed batch: measured on
the emulator this moves ~59k msg/s where streaming pull with a callback per message moves ~2k.
The blocking gRPC calls run in worker threads so the event loop keeps writing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

import grpc
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.protobuf import duration_pb2
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from google.pubsub_v1.types import (
    AcknowledgeRequest,
    DeadLetterPolicy,
    ModifyAckDeadlineRequest,
    PullResponse,
    RetryPolicy,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from biz2bricks_consumer.batching import InboundMessage
from biz2bricks_consumer.errors import RETRYABLE_PUBSUB_ERRORS
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_core.errors import ConfigurationError

log = logging.getLogger(__name__)

ACK_CHUNK = 1000  # ack_ids per acknowledge/modifyAckDeadline request, well under the size cap
# A pull response carries up to Pub/Sub's 10 MB per message plus its envelope. gRPC's default
# receive limit (4 MiB) would fail every pull that brings a big message, forever, and with it
# the messages next to it. (The production transport already sets no limit; the emulator's
# plain channel does not.)
MAX_RECEIVE_BYTES = 11 * 1024 * 1024
# The first call of a command answers within this, without retries: an emulator host that is
# wrong or not started is named in seconds, not after the client's minute of retrying.
PROBE_TIMEOUT_S = 5.0
EMULATOR_COMMAND = "gcloud beta emulators pubsub start --host-port={host} --project={project}"


def pubsub_unreachable(error: BaseException, project_id: str) -> ConfigurationError:
    """The one-line ConfigurationError for a Pub/Sub (or emulator) that did not answer."""
    cause = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return ConfigurationError(
            f"the Pub/Sub emulator at PUBSUB_EMULATOR_HOST={emulator} did not answer within "
            f"{PROBE_TIMEOUT_S:g} s ({cause}): start it "
            f"({EMULATOR_COMMAND.format(host=emulator, project=project_id)}) or set "
            "PUBSUB_EMULATOR_HOST to the host:port it listens on"
        )
    return ConfigurationError(
        f"Pub/Sub did not answer within {PROBE_TIMEOUT_S:g} s ({cause}): check the network, "
        "the credentials and PUBSUB_PROJECT_ID, or set PUBSUB_EMULATOR_HOST=host:port to use "
        "the emulator"
    )


def subscriber_client() -> SubscriberClient:
    """A SubscriberClient whose channel accepts the largest message Pub/Sub delivers."""
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not emulator:
        return SubscriberClient()
    channel = grpc.insecure_channel(
        emulator, options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
    )
    return SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class PubSubSource:
    """Pulls, acks and extends leases on one subscription."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self._settings = settings
        self._path = settings.subscription_path
        self._client = subscriber_client()

    def _pull_sync(self, max_messages: int) -> list[InboundMessage]:
        try:
            response = self._client.pull(
                subscription=self._path,
                max_messages=max_messages,
                timeout=self._settings.pull_timeout_s,
                retry=None,
            )
        except gexc.DeadlineExceeded:
            return []
        messages = []
        for received in PullResponse.pb(response).received_messages:
            message = received.message
            messages.append(
                InboundMessage(
                    ack_id=received.ack_id,
                    message_id=message.message_id,
                    data=message.data,
                    attributes=message.attributes,
                    publish_time_s=message.publish_time.seconds + message.publish_time.nanos / 1e9,
                    delivery_attempt=received.delivery_attempt or None,
                )
            )
        return messages

    async def pull(self, max_messages: int) -> list[InboundMessage]:
        """Up to ``max_messages`` messages; an empty list when there are none right now."""
        return await asyncio.to_thread(self._pull_sync, max_messages)

    def _acknowledge_sync(self, ack_ids: Sequence[str]) -> None:
        # Built as a raw protobuf: proto-plus converts a repeated field element by element,
        # which cost ~2 us per acked message on the hot path.
        request = AcknowledgeRequest.pb()(subscription=self._path, ack_ids=ack_ids)
        self._client.acknowledge(request=AcknowledgeRequest.wrap(request), timeout=30)

    def _modify_deadline_sync(self, ack_ids: Sequence[str], seconds: int) -> None:
        request = ModifyAckDeadlineRequest.pb()(
            subscription=self._path, ack_ids=ack_ids, ack_deadline_seconds=seconds
        )
        self._client.modify_ack_deadline(request=ModifyAckDeadlineRequest.wrap(request), timeout=30)

    async def _chunked(
        self, call: Callable[..., None], ack_ids: Sequence[str], *extra: object
    ) -> None:
        for start in range(0, len(ack_ids), ACK_CHUNK):
            chunk = ack_ids[start : start + ACK_CHUNK]
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RETRYABLE_PUBSUB_ERRORS),
                wait=wait_exponential_jitter(multiplier=0.1, max=5, jitter=0.1),
                stop=stop_after_attempt(5),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(call, chunk, *extra)

    async def ack(self, ack_ids: Sequence[str]) -> None:
        """Acknowledge messages (only ever after their batch committed)."""
        await self._chunked(self._acknowledge_sync, ack_ids)

    async def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        """Keep the lease on messages still being worked on."""
        await self._chunked(self._modify_deadline_sync, ack_ids, seconds)

    async def release(self, ack_ids: Sequence[str]) -> None:
        """Hand messages back for redelivery now (no ack)."""
        await self._chunked(self._modify_deadline_sync, ack_ids, 0)

    async def check(self) -> None:
        """Raise if the subscription cannot be read (one attempt, within PROBE_TIMEOUT_S)."""
        await asyncio.to_thread(
            self._client.get_subscription,
            subscription=self._path,
            timeout=PROBE_TIMEOUT_S,
            retry=None,
        )

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()


def ensure_topic_and_subscription(settings: ConsumerSettings) -> dict[str, str]:
    """Create the topic, a dead-letter topic, the alerts topic and the subscription if missing."""
    publisher = PublisherClient()
    subscriber = SubscriberClient()
    dead_letter_topic = f"{settings.topic_path}-dead-letter"
    done: dict[str, str] = {}
    try:
        try:
            publisher.get_topic(topic=settings.topic_path, timeout=PROBE_TIMEOUT_S, retry=None)
        except gexc.NotFound:
            pass
        except (gexc.GoogleAPICallError, gexc.RetryError) as error:
            raise pubsub_unreachable(error, settings.project_id) from error
        for topic in (settings.topic_path, dead_letter_topic, settings.alerts_topic_path):
            try:
                publisher.create_topic(name=topic)
                done[topic] = "created"
            except gexc.AlreadyExists:
                done[topic] = "exists"
        request = {
            "name": settings.subscription_path,
            "topic": settings.topic_path,
            "ack_deadline_seconds": settings.ack_deadline_s,
            "retry_policy": RetryPolicy(
                minimum_backoff=duration_pb2.Duration(seconds=10),
                maximum_backoff=duration_pb2.Duration(seconds=600),
            ),
            "dead_letter_policy": DeadLetterPolicy(
                dead_letter_topic=dead_letter_topic, max_delivery_attempts=20
            ),
        }
        try:
            subscriber.create_subscription(request=request)
            done[settings.subscription_path] = "created"
        except gexc.AlreadyExists:
            done[settings.subscription_path] = "exists"
        except gexc.GoogleAPICallError as error:
            log.warning("pubsub.dead_letter_unsupported", extra={"error": str(error)})
            del request["dead_letter_policy"]
            subscriber.create_subscription(request=request)
            done[settings.subscription_path] = "created (no dead-letter policy)"
    finally:
        subscriber.close()
        publisher.transport.close()
    return done
