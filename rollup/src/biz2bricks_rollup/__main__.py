"""``biz2bricks-rollup``: run the daily rollup, reconcile counters, or serve the trigger."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import date

from biz2bricks_core.cli import EXIT_CONFIGURATION, command_parser, listen_error, run_command
from biz2bricks_core.config import DatabaseConfig
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import ConfigurationError, PermanentError
from biz2bricks_core.logs import configure_logging
from biz2bricks_core.retention import RetentionSettings
from biz2bricks_core.schema import check_schema
from biz2bricks_rollup import accounts, books
from biz2bricks_rollup.archive import ArchiveSettings, archive, archived_before
from biz2bricks_rollup.archive_store import open_store
from biz2bricks_rollup.daily import after_summaries
from biz2bricks_rollup.holds_reconcile import (
    find_hold_states,
    repair_holds,
)
from biz2bricks_rollup.reconcile import find_drift, repair, reserved_only
from biz2bricks_rollup.reprice import reprice
from biz2bricks_rollup.rollup import DayResult, RollupBusyError, days_between, run_rollup
from biz2bricks_rollup.server import RollupServer, ServeSettings
from biz2bricks_rollup.usage_report import add_usage_parser, usage_report

log = logging.getLogger("biz2bricks_rollup")

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_BUSY = 0, 1, EXIT_CONFIGURATION, 3


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "biz2bricks-rollup",
        "Daily usage summaries: run the rollup once, reconcile counters with their events "
        "and documents, or serve the HTTP trigger for Cloud Scheduler.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="rebuild daily summaries (default: the due days)")
    run.add_argument("--date", type=date.fromisoformat, help="one UTC day, YYYY-MM-DD")
    run.add_argument("--from", dest="first", type=date.fromisoformat, help="first day")
    run.add_argument("--to", dest="last", type=date.fromisoformat, help="last day (inclusive)")
    run.add_argument(
        "--wait",
        action="store_true",
        help="wait for a rollup already running instead of exiting with code 3",
    )
    reconcile = commands.add_parser("reconcile", help="compare counters with events and documents")
    reconcile.add_argument("--fix", action="store_true", help="repair the counters that differ")
    again = commands.add_parser(
        "reprice", help="recompute events' cost from the prices now in model_pricing"
    )
    again.add_argument("--from", dest="first", type=date.fromisoformat, help="first UTC day")
    again.add_argument("--to", dest="last", type=date.fromisoformat, help="last UTC day")
    again.add_argument("--unpriced", action="store_true", help="only events without a cost")
    again.add_argument(
        "--dry-run", action="store_true", help="print the differences, change nothing"
    )
    keep = commands.add_parser(
        "archive",
        help="write months older than USAGE_EVENTS_RETENTION_MONTHS to Parquet under "
        "USAGE_ARCHIVE_URL, verify, then remove them from PostgreSQL",
    )
    keep.add_argument("--before", type=_month, help="archive only months before YYYY-MM")
    keep.add_argument("--dry-run", action="store_true", help="print the months, change nothing")
    books.add_commands(commands)
    accounts.add_commands(commands)
    add_usage_parser(commands)
    serve = commands.add_parser("serve", help="HTTP trigger for Cloud Scheduler (POST /)")
    serve.add_argument("--port", type=int, help="default $PORT or 8080")
    return parser


def _month(value: str) -> date:
    """A month given as YYYY-MM (argparse prints the error as "argument --before: ...")."""
    try:
        if len(value) != 7:
            raise ValueError(value)
        return date.fromisoformat(f"{value}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a month as YYYY-MM, got {value!r}") from None


def _days(args: argparse.Namespace) -> list[date] | None:
    if args.date and (args.first or args.last):
        raise ValueError("use --date, or --from with --to, not both")
    if args.date:
        return [args.date]
    if args.first or args.last:
        if not (args.first and args.last):
            raise ValueError("--from and --to go together")
        return days_between(args.first, args.last)
    return None


def _progress(result: DayResult, done: int, total: int) -> None:
    if sys.stdout.isatty():
        print(
            f"[{done}/{total}] {result.day}: {result.groups:,} groups, {result.written:,} "
            f"written, {result.removed:,} removed in {result.seconds:.2f}s",
            flush=True,
        )


async def _run(db: DatabaseManager, args: argparse.Namespace) -> int:
    try:
        await db.check()  # a refused database, role or password: one line naming the fix
        await check_schema(db)  # not migrated: one line naming `alembic upgrade head`
        if args.command == "run":
            return await _rollup_run(db, args)
        if args.command == "archive":
            return await _archive(db, args)
        if args.command == "reconcile":
            drifts = await find_drift(db)
            for drift in drifts:
                print(drift.describe())
            if args.fix and drifts:
                fixed = await repair(db, drifts)
                print(f"repaired {len(fixed)} organization(s)")
            for reserved in await reserved_only(db):
                print(reserved.describe())
            if not drifts:
                print("no drift: every counter equals its events and documents")
            holds_drifted = await _reconcile_holds(db, fix=args.fix)
            return EXIT_DRIFT if drifts or holds_drifted else EXIT_OK
        if args.command == "reprice":
            return await _reprice(db, args)
        if args.command == "void":
            return await books.run_void(db, args)
        if args.command == "statement":
            return await books.run_statement(db, args)
        if args.command == "provision":
            return await accounts.run_provision(db, args)
        if args.command == "grant":
            return await accounts.run_grant(db, args)
        if args.command == "usage":
            sys.stdout.write(await usage_report(db, args))
            return EXIT_OK
        return await _serve(db, args)
    except RollupBusyError as error:
        print(f"biz2bricks-rollup: {error}", file=sys.stderr)
        return EXIT_BUSY
    except (ValueError, PermanentError) as error:
        # A refused argument, an unknown organization, grant or event: one line, exit 2.
        if isinstance(error, ConfigurationError):
            raise  # run_command reports it
        print(f"biz2bricks-rollup: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await db.dispose()


async def _rollup_run(db: DatabaseManager, args: argparse.Namespace) -> int:
    """Summaries, then retention: partitions ahead, prunes, and the archive when configured."""
    days = _days(args)
    first_kept = await archived_before(db)
    if days and first_kept is not None and min(days) < first_kept:
        raise ValueError(
            f"{min(days)} lies in a month already archived (PostgreSQL keeps {first_kept:%Y-%m} "
            "on): its summaries are final"
        )
    results = await run_rollup(db, days, wait=args.wait, progress=_progress)
    done = await after_summaries(db)
    summary = {"days": [r.as_dict() for r in results], **done.as_dict()}
    if not sys.stdout.isatty():
        print(json.dumps(summary))
    else:
        print(
            f"rolled up {len(results)} day(s), "
            f"{sum(r.written for r in results):,} rows written; {done.describe()}"
        )
    return EXIT_OK


async def _archive(db: DatabaseManager, args: argparse.Namespace) -> int:
    settings = ArchiveSettings()
    if not settings.url and not args.dry_run:
        raise ConfigurationError("USAGE_ARCHIVE_URL: not set (a directory or gs://bucket/prefix)")
    if not settings.url:
        print("USAGE_ARCHIVE_URL is not set: a real run would refuse to start", file=sys.stderr)
    results = await archive(
        db,
        open_store(settings.url) if settings.url else None,
        retention_months=RetentionSettings().events_months,
        before=args.before,
        dry_run=args.dry_run,
        rows_per_file=settings.rows_per_file,
        progress=lambda result: print(result.describe(), flush=True),
    )
    if not results:
        print("nothing to archive: every month in PostgreSQL is within retention")
    return EXIT_OK


async def _reprice(db: DatabaseManager, args: argparse.Namespace) -> int:
    result = await reprice(
        db, first=args.first, last=args.last, unpriced_only=args.unpriced, dry_run=args.dry_run
    )
    for line in result.lines():
        print(line)
    verb = "would change" if args.dry_run else "changed"
    print(
        f"examined {result.examined:,} event(s), {verb} {result.changed:,}"
        + ("" if args.dry_run else f", rolled up {len(result.days)} day(s) again")
    )
    return EXIT_OK


async def _reconcile_holds(db: DatabaseManager, *, fix: bool) -> bool:
    """Report (and with ``fix`` repair) token-hold counters and expired holds; True if drifted."""
    states = await find_hold_states(db)
    for state in states:
        print(state.describe())
    if fix and states:
        print(f"repaired token holds of {await repair_holds(db, states)} organization(s)")
    if not any(s.drifted for s in states):
        print("no drift: every tokens_reserved equals its live holds")
    return any(s.drifted for s in states)


async def _serve(db: DatabaseManager, args: argparse.Namespace) -> int:
    settings = ServeSettings(**({"port": args.port} if args.port is not None else {}))
    server = RollupServer(db, settings)
    try:
        await server.start()
    except OSError as error:
        raise listen_error(
            error, settings.host, settings.port, "PORT (or --port) or ROLLUP_HOST"
        ) from error
    log.info("rollup.serving", extra={"port": server.port, "auth": settings.auth})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = _parser().parse_args(argv)
    return run_command("biz2bricks-rollup", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    db = DatabaseManager(DatabaseConfig())
    return asyncio.run(_run(db, args))


if __name__ == "__main__":
    sys.exit(main())
