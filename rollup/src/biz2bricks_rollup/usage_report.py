"""``biz2bricks-rollup usage``: an organization's usage from the query API, as a table, CSV or
JSON (the same rows as ``GET /usage/{org_id}``)."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import InvalidArgumentError
from biz2bricks_core.usage_export import row_json, rows_csv, rows_table
from biz2bricks_core.usage_service import UsageService
from biz2bricks_core.usage_windows import DIMENSIONS, WINDOWS

__all__ = ["add_usage_parser", "usage_report"]


def add_usage_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``usage`` subcommand's arguments."""
    usage = commands.add_parser("usage", help="an organization's usage by window, group, filter")
    usage.add_argument("--org", required=True, help="organization id (UUID)")
    usage.add_argument("--from", dest="first", type=date.fromisoformat, help="first day")
    usage.add_argument("--to", dest="last", type=date.fromisoformat, help="last day (inclusive)")
    usage.add_argument("--window", choices=WINDOWS, help="one row per hour, day or month")
    usage.add_argument(
        "--by", action="append", choices=DIMENSIONS, default=[], help="group by (repeatable)"
    )
    usage.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="DIMENSION=VALUE",
        help="keep events whose dimension has this value (repeatable; empty value: none)",
    )
    usage.add_argument("--time-zone", default="UTC", help="IANA zone of days and windows")
    usage.add_argument("--format", choices=("table", "csv", "json"), default="table")


def _filters(pairs: list[str]) -> dict[str, list[str | None]]:
    found: dict[str, list[str | None]] = {}
    for pair in pairs:
        dimension, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"--filter {pair!r}: use DIMENSION=VALUE")
        found.setdefault(dimension, []).append(value or None)
    return found


def _range(args: argparse.Namespace, today: date) -> tuple[date, date]:
    first = args.first or today.replace(day=1)
    last = args.last or today
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return first, last


async def usage_report(db: DatabaseManager, args: argparse.Namespace) -> str:
    """The report's text for the parsed arguments (days are midnights in --time-zone)."""
    try:
        zone = ZoneInfo(args.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--time-zone: unknown IANA time zone {args.time_zone!r}") from None
    first, last = _range(args, datetime.now(zone).date())
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
    group_by = list(dict.fromkeys(args.by))
    try:
        rows = await UsageService(db).query_usage(
            args.org,
            start=start,
            end=end,
            window=args.window,
            group_by=group_by,
            filters=_filters(args.filter),
            time_zone=args.time_zone,
        )
    except InvalidArgumentError as error:
        raise ValueError(str(error)) from None
    if args.format == "csv":
        return rows_csv(rows, group_by)
    if args.format == "json":
        return json.dumps([row_json(r) for r in rows], indent=2) + "\n"
    if not rows:
        return f"no usage between {first} and {last} ({args.time_zone})\n"
    return rows_table(rows, group_by, windowed=args.window is not None)
