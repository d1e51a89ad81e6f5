"""The harness's emulator: a message published to a per-test topic is pulled back."""

from __future__ import annotations

from google.cloud import pubsub_v1

from tests.conftest import PubSubNames


def test_publish_and_pull_through_the_emulator(pubsub_names: PubSubNames) -> None:
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(pubsub_names.topic_path, b"hello", event_type="llm.tokens").result(10)
    with pubsub_v1.SubscriberClient() as subscriber:
        response = subscriber.pull(
            subscription=pubsub_names.subscription_path, max_messages=10, timeout=10
        )
        assert [m.message.data for m in response.received_messages] == [b"hello"]
        assert response.received_messages[0].message.attributes["event_type"] == "llm.tokens"
        subscriber.acknowledge(
            subscription=pubsub_names.subscription_path,
            ack_ids=[m.ack_id for m in response.received_messages],
        )
    publisher.transport.close()
