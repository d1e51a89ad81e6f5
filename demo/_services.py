"""Find or start the demo's services, and stop what it started."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

from biz2bricks_devtools.localservices import (
    ServiceUnavailableError,
    create_database,
    drop_database,
    migrate,
    start_postgres,
    start_pubsub_emulator,
)

ROOT = Path(__file__).resolve().parent.parent


def start_services(stack: ExitStack, project: str) -> str:
    """The database URL to use (migrated), with PUBSUB_EMULATOR_HOST set; cleanup on ``stack``.

    DATABASE_URL is used as it is; otherwise an embedded PostgreSQL gets a fresh database.
    """
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        print("PostgreSQL: DATABASE_URL")
    else:
        server = start_postgres(env_vars=())
        stack.callback(server.stop)
        url = create_database(server.address, prefix="biz2bricks_demo")
        stack.callback(drop_database, url)
        os.environ["DATABASE_URL"] = url
        print(f"PostgreSQL: started ({server.source})")
    migrate(url, ROOT / "alembic.ini")
    print("migrations: applied (alembic upgrade head)")
    emulator = start_pubsub_emulator(project)
    stack.callback(emulator.stop)
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    os.environ["PUBSUB_PROJECT_ID"] = project
    print(f"Pub/Sub emulator: {emulator.address} ({emulator.source})")
    return url


__all__ = ["ServiceUnavailableError", "start_services"]
