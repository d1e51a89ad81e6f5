"""``biz2bricks-consumer``: run the worker (default) or set up the topic and subscription."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from google.api_core import exceptions as gexc

from biz2bricks_consumer.errors import WorkerFailed
from biz2bricks_consumer.health import HealthServer
from biz2bricks_consumer.pubsub import PubSubSource, ensure_topic_and_subscription
from biz2bricks_consumer.settings import ConsumerSettings
from biz2bricks_consumer.worker import CommitHook, Worker, tune_gc
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


async def run_worker(
    settings: ConsumerSettings, db: DatabaseManager, *, on_committed: CommitHook | None = None
) -> int:
    """Run the worker with signal handling and the health server; return the exit code."""
    source = PubSubSource(settings)
    worker = Worker(settings, db, source, on_committed=on_committed)
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
        code = await _check_subscription(source, settings)
        if code != 0 or worker.stopping:
            return code
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
        await health.start()
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


async def _check_subscription(source: PubSubSource, settings: ConsumerSettings) -> int:
    """0 when the subscription can be read; else log what is missing and return 2."""
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
    return 0


def _exit_before_start(signum: int, _: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None, *, on_committed: CommitHook | None = None) -> int:
    """Console-script entry point (``on_committed``: see Worker; tests inject faults there)."""
    # Until the worker's own handlers are installed, SIGTERM means: nothing pulled, exit 0.
    signal.signal(signal.SIGTERM, _exit_before_start)
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
    return asyncio.run(run_worker(settings, db, on_committed=on_committed))


if __name__ == "__main__":
    sys.exit(main())
