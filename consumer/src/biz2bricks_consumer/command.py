"""``biz2bricks-consumer``: run the worker (default) or set up the topic and subscription.

Entered through ``_entry.main`` (the console script and ``python -m``), which installs the
process's one handler of SIGTERM and SIGINT before this module's imports run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError

from biz2bricks_consumer._entry import StopSignals
from biz2bricks_consumer.errors import WorkerFailed
from biz2bricks_consumer.health import HealthServer
from biz2bricks_consumer.pubsub import (
    PubSubSource,
    ensure_topic_and_subscription,
    pubsub_unreachable,
)
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker, tune_gc
from biz2bricks_core.cli import command_parser, listen_error, run_command
from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database import DATABASE_DOWN_ERRORS, DatabaseManager
from biz2bricks_core.errors import ConfigurationError, DatabaseAccessError
from biz2bricks_core.logs import configure_logging
from biz2bricks_core.schema import check_schema

log = logging.getLogger("biz2bricks_consumer")

SCHEMA_CHECK_TIMEOUT_S = 5.0


def _run_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the ``run`` subcommand the defaults are suppressed so that they never overwrite the
    # same options given before it (``biz2bricks-consumer --exit-when-idle 5`` still works).
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        default=default,
        help="stop after SECONDS with nothing to pull (default $CONSUMER_EXIT_WHEN_IDLE)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        default=default,
        help="port of /healthz, /readyz, /metrics (default $PORT or 8080; 0: any)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "biz2bricks-consumer",
        "Consume usage events from Pub/Sub into PostgreSQL. Without a command it runs the "
        "worker until SIGTERM.",
    )
    _run_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="{run,setup}")
    run = commands.add_parser(
        "run",
        help="run the worker until SIGTERM (the default)",
        description="Pull usage events in batches, write them, ack after commit; until SIGTERM.",
    )
    _run_options(run, suppress=True)
    commands.add_parser(
        "setup",
        help="create the topic, its dead-letter topic and the subscription if missing",
        description=(
            "Create the topic (USAGE_TOPIC), its dead-letter topic and the subscription "
            "(USAGE_SUBSCRIPTION) in PUBSUB_PROJECT_ID if they are missing. For development and "
            "the emulator; in production create them with Terraform or gcloud."
        ),
    )
    return parser


NO_CREDENTIALS_HINT = (
    "no Google Cloud credentials for Pub/Sub: set PUBSUB_EMULATOR_HOST=host:port to use the "
    "emulator, or provide credentials (GOOGLE_APPLICATION_CREDENTIALS=key.json, or "
    "gcloud auth application-default login, or a service account on Google Cloud)"
)


def build_worker(settings: ConsumerSettings, db: DatabaseManager) -> Worker:
    """The production worker, on a Pub/Sub client made from the environment's credentials."""
    try:
        source = PubSubSource(settings)
    except DefaultCredentialsError as error:
        raise ConfigurationError(NO_CREDENTIALS_HINT) from error
    return Worker(settings, db, source)


async def run_worker(worker: Worker, signals: StopSignals | None = None) -> int:
    """Run the worker with the health server (and ``signals`` aimed at it); return the exit code.

    Closes the worker's Pub/Sub client and database pool when it ends.
    """
    settings, db, source = worker.settings, worker.db, worker.source
    if signals is not None:
        signals.attach(asyncio.get_running_loop(), worker.stop)
    try:
        code = await _check_subscription(source, settings)
        if code != 0 or worker.stopping:
            return code
        await _check_schema(db)
        health = HealthServer(
            worker.metrics,
            {
                "database": worker.check_database,
                "pubsub": source.check,
                "pulling": worker.check_pulling,
            },
            settings.health_host,
            settings.health_port,
        )
        try:
            await health.start()
        except OSError as error:
            raise listen_error(
                error, settings.health_host, settings.health_port, "PORT (or --health-port)"
            ) from error
        log.info("consumer.started", extra=_start_fields(settings, health.port))
        try:
            await worker.run()
        except WorkerFailed as error:
            log.error("consumer.failed", extra={"error": str(error)})
            return 1
        finally:
            await health.close()
        return 0
    finally:
        source.close()
        with contextlib.suppress(Exception):  # a pool on an unreachable server: do not hang
            await asyncio.wait_for(db.dispose(), timeout=1.0)


def _start_fields(settings: ConsumerSettings, health_port: int) -> dict[str, object]:
    """What the start line says: where it pulls from, where it answers, how it batches."""
    return {
        "subscription": settings.subscription,
        "project": settings.project_id,
        "health": f"http://{settings.health_host}:{health_port}/readyz",
        "batch_max_messages": settings.batch_max_messages,
        "batch_linger_s": settings.batch_linger_s,
        "pull_concurrency": settings.pull_concurrency,
        "write_concurrency": settings.write_concurrency,
        "exit_when_idle_s": settings.exit_when_idle_s,
    }


async def _check_schema(db: DatabaseManager) -> None:
    """Refuse to start on a database not migrated for this release (SchemaOutdatedError, one
    line and exit 2). A database that does not answer now is the worker's to wait for, and a
    role that may not read alembic_version is not a reason to stay down: both are logged and
    the worker starts (a missing column then fails its first batch, and the next start, with
    the database answering, names the migration)."""
    try:
        await asyncio.wait_for(check_schema(db), timeout=SCHEMA_CHECK_TIMEOUT_S)
    except DatabaseAccessError:
        raise  # no such database or role, a wrong password: a setting to fix, not to wait out
    except (*DATABASE_DOWN_ERRORS, TimeoutError, asyncpg.PostgresError) as error:
        log.warning(
            "consumer.schema_unchecked",
            extra={
                "error": f"{type(error).__name__}: {error}",
                "hint": "could not read alembic_version; run `alembic upgrade head` if unsure",
            },
        )


async def _check_subscription(source: PubSubSource, settings: ConsumerSettings) -> int:
    """0 when the subscription can be read; 2 (logged) when it is missing; ConfigurationError
    (one line naming PUBSUB_EMULATOR_HOST) when Pub/Sub does not answer within seconds."""
    try:
        await source.check()
    except gexc.NotFound:
        log.error(
            "consumer.subscription_missing",
            extra={
                "subscription": settings.subscription_path,
                "hint": "create it with: biz2bricks-consumer setup",
            },
        )
        return 2
    except (gexc.GoogleAPICallError, gexc.RetryError) as error:
        raise pubsub_unreachable(error, settings.project_id) from error
    return 0


def main(argv: list[str] | None = None, *, signals: StopSignals | None = None) -> int:
    """Run the command; ``signals`` (installed by the entry point) stop the worker it runs."""
    args = _parser().parse_args(argv)
    return run_command("biz2bricks-consumer", lambda: _main(args, signals))


def _main(args: argparse.Namespace, signals: StopSignals | None) -> int:
    configure_logging(args.log_level)
    overrides: dict[str, Any] = {}
    if args.exit_when_idle is not None:
        overrides["exit_when_idle_s"] = args.exit_when_idle
    if args.health_port is not None:
        overrides["health_port"] = args.health_port
    settings = ConsumerSettings(**overrides)
    if args.command == "setup":
        try:
            outcomes = ensure_topic_and_subscription(settings)
        except DefaultCredentialsError as error:
            raise ConfigurationError(NO_CREDENTIALS_HINT) from error
        for name, outcome in outcomes.items():
            print(f"{name}: {outcome}")
        return 0
    db = DatabaseManager(DatabaseConfig())
    tune_gc()
    return asyncio.run(_serve(settings, db, signals))


async def _serve(
    settings: ConsumerSettings, db: DatabaseManager, signals: StopSignals | None
) -> int:
    return await run_worker(build_worker(settings, db), signals)
