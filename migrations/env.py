"""Alembic environment: async engine from DatabaseConfig (or a connection handed in by code)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from biz2bricks_core.cli import OPERATOR_ERRORS, report_operator_error
from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.event_partitions import is_partition_name
from biz2bricks_core.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # The partitions of usage_events are made by the pipeline (biz2bricks_core.
    # event_partitions), not by models: the comparison looks at the partitioned table only.
    return not (type_ == "table" and name is not None and is_partition_name(name))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=False,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def _database_config() -> DatabaseConfig:
    url = config.attributes.get("database_url")
    return DatabaseConfig(database_url=url) if url else DatabaseConfig()


async def _run_async() -> None:
    db = DatabaseManager(_database_config())
    try:
        await db.check()
        async with db.engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await db.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_config().sqlalchemy_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        run_migrations_offline()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


try:
    main()
except OPERATOR_ERRORS as error:
    if config.cmd_opts is None:
        raise  # called from code (tests, the demo): the caller handles it
    # The alembic command: one line that names the fix, exit 2 (traceback with LOG_LEVEL=DEBUG).
    raise SystemExit(report_operator_error("alembic", error)) from None
