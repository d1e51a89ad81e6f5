"""``biz2bricks-consumer``: run the worker (default) or set up the topic and subscription."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from google.api_core import exceptions as gexc

from biz2bricks_consumer.health import HealthServer
from biz2bricks_consumer.pubsub import PubSubSource, ensure_topic_and_subscription
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import Worker, tune_gc
from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import ConfigurationError
from biz2bricks_core.logs import configure_logging

log = logging.getLogger("biz2bricks_consumer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biz2bricks-consumer",
        description="Consume usage events from Pub/Sub into PostgreSQL (runs until SIGTERM).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "setup"],
        default="run",
        help="run the worker (default), or create the topic and subscription",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS with nothing to pull",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="port of /healthz, /readyz, /metrics (default $PORT or 8080; 0: any)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return parser


async def run_worker(settings: ConsumerSettings, db: DatabaseManager) -> int:
    """Run the worker with signal handling and the health server; return the exit code."""
    source = PubSubSource(settings)
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
    except gexc.GoogleAPICallError as error:
        log.error(
            "consumer.pubsub_unreachable",
            extra={
                "error": str(error),
                "hint": (
                    "set PUBSUB_EMULATOR_HOST for the emulator, or check credentials and project"
                ),
            },
        )
        return 2
    worker = Worker(settings, db, source)
    health = HealthServer(
        worker.metrics,
        {"database": worker.check_database, "pubsub": source.check},
        settings.health_host,
        settings.health_port,
    )
    await health.start()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.error("consumer.second_signal_exit_now", extra={"signal": signum})
            os._exit(1)
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run()
    finally:
        await health.close()
        source.close()
        await db.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    overrides: dict[str, Any] = {}
    if args.exit_when_idle is not None:
        overrides["exit_when_idle_s"] = args.exit_when_idle
    if args.health_port is not None:
        overrides["health_port"] = args.health_port
    try:
        settings = ConsumerSettings(**overrides)
        if args.command == "setup":
            for name, outcome in ensure_topic_and_subscription(settings).items():
                print(f"{name}: {outcome}")
            return 0
        db = DatabaseManager(DatabaseConfig())
    except ConfigurationError as error:
        print(f"biz2bricks-consumer: {error}", file=sys.stderr)
        return 2
    tune_gc()
    return asyncio.run(run_worker(settings, db))


if __name__ == "__main__":
    sys.exit(main())
