"""Closing the books: the statement close of the rollup run, and the void and statement
commands of ``biz2bricks-rollup``."""

from __future__ import annotations

import argparse
import csv
import io
import uuid
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings
from biz2bricks_core.corrections import preview_void, void_events
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.statements import StatementLine, close_statements, statement_of
from biz2bricks_rollup.archive import archived_before


class StatementSettings(Settings):
    """How long after its period ends a statement stays open for late events."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    grace_hours: float = Field(
        default=24.0, ge=0, le=24 * 366, validation_alias="USAGE_STATEMENT_GRACE_HOURS"
    )


async def close_due_statements(db: DatabaseManager) -> int:
    """Close the statements whose period ended over the grace ago (after the summaries)."""
    return await close_statements(db, timedelta(hours=StatementSettings().grace_hours))


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``void`` and ``statement`` subcommands."""
    void = commands.add_parser(
        "void", help="void an organization's usage (append-only; counters follow)"
    )
    void.add_argument("--org", required=True, type=uuid.UUID, help="organization id")
    chosen = void.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--event-id", dest="event_ids", type=uuid.UUID, nargs="+")
    chosen.add_argument("--request-id")
    chosen.add_argument("--from", dest="start", type=_moment, help="RFC 3339 (with --to)")
    void.add_argument("--to", dest="end", type=_moment, help="RFC 3339, exclusive")
    void.add_argument("--reason", required=True, help="why (kept with the correction)")
    void.add_argument("--actor", help="who asks (kept with the correction)")
    void.add_argument("--dry-run", action="store_true", help="print what would change, only")
    statement = commands.add_parser("statement", help="an organization's period statement")
    statement.add_argument("--org", required=True, type=uuid.UUID, help="organization id")
    statement.add_argument("--period", required=True, type=_month, help="YYYY-MM")
    statement.add_argument("--format", choices=("json", "csv"), default="json")


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r}: give a time zone offset, e.g. +00:00")
    return moment


def _month(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected YYYY-MM") from None


async def run_void(db: DatabaseManager, args: argparse.Namespace) -> int:
    """Print what the void takes away per model, then (unless a dry run) void it."""
    if (args.start is None) != (args.end is None):
        raise ValueError("--from and --to go together: the range [from, to)")
    selectors = {
        "event_ids": args.event_ids,
        "request_id": args.request_id,
        "start": args.start,
        "end": args.end,
    }
    for row in await preview_void(db, args.org, **selectors):
        print(
            # int(): asyncpg reads sum(bigint), a numeric, as Decimal('6E+4') for 60000
            f"{row['provider']}/{row['model']}: {row['events']:,} event(s),"
            f" {int(row['tokens']):,} tokens, cost {row['cost_usd'] or 0}"
            + (f" ({row['unpriced']} unpriced)" if row["unpriced"] else "")
        )
    kept_from = await archived_before(db)
    if kept_from is not None and args.start is not None and args.start.date() < kept_from:
        print(_archived_note(kept_from))
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    result = await void_events(db, args.org, reason=args.reason, actor=args.actor, **selectors)
    print(
        f"voided {result.voided:,} event(s) ({result.tokens:,} tokens, cost {result.cost_usd});"
        f" {result.already_voided:,} already voided, {result.not_found:,} not found"
    )
    if result.not_found and kept_from is not None:
        print(_archived_note(kept_from))
    return 0


def _archived_note(kept_from: date) -> str:
    return (
        f"events that occurred before {kept_from:%Y-%m} are archived (Parquet, USAGE_ARCHIVE_URL)"
        " and can no longer be voided; their statements are closed. To give the tokens back,"
        " book an adjustment instead: a credit grant (UsageService.grant_credits with the"
        " reason and the event ids), which the open statement's next usage consumes first"
        " with a low priority number."
    )


async def run_statement(db: DatabaseManager, args: argparse.Namespace) -> int:
    """Print the statement as JSON, or its lines and adjustments as CSV."""
    statement = await statement_of(db, args.org, args.period)
    if args.format == "json":
        print(statement.to_json())
        return 0
    out = io.StringIO()
    writer = csv.DictWriter(out, ["section", *StatementLine.__dataclass_fields__])
    writer.writeheader()
    for section, lines in (("line", statement.lines), ("adjustment", statement.adjustments)):
        for line in lines:
            values = {k: "" if v is None else str(v) for k, v in asdict(line).items()}
            writer.writerow({"section": section, **values})
    print(out.getvalue(), end="")
    return 0
