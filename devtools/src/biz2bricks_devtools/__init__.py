"""biz2bricks-devtools: local services for tests, benchmarks and the demo (never deployed)."""

from __future__ import annotations

from biz2bricks_devtools.localservices import (
    LocalService,
    ServiceUnavailableError,
    alembic_config,
    create_database,
    docker_available,
    drop_database,
    find_free_port,
    migrate,
    start_postgres,
    start_pubsub_emulator,
    wait_for_port,
)

__all__ = [
    "LocalService",
    "ServiceUnavailableError",
    "alembic_config",
    "create_database",
    "docker_available",
    "drop_database",
    "find_free_port",
    "migrate",
    "start_postgres",
    "start_pubsub_emulator",
    "wait_for_port",
]
