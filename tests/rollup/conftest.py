"""Fixtures of the archive tests: a database of their own, and a GCS emulator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from biz2bricks_core import DatabaseConfig, DatabaseManager
from biz2bricks_devtools.localservices import (
    LocalService,
    ServiceUnavailableError,
    start_storage_emulator,
)
from tests.support import create_database, drop_database, migrate, service_missing


@pytest.fixture
def archive_database_url(postgres_server: LocalService) -> Iterator[str]:
    """A fresh migrated database: archiving removes months for every organization at once."""
    url = create_database(postgres_server.address, prefix="b2b_archive")
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture
async def archive_db(archive_database_url: str) -> AsyncIterator[DatabaseManager]:
    manager = DatabaseManager(DatabaseConfig(database_url=archive_database_url))
    yield manager
    await manager.dispose()


@pytest.fixture(scope="session")
def storage_emulator() -> Iterator[LocalService]:
    """A GCS emulator (gcp-storage-emulator from PyPI), as STORAGE_EMULATOR_HOST."""
    try:
        service = start_storage_emulator()
    except ServiceUnavailableError as error:
        service_missing(error)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = service.address
    yield service
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    service.stop()
