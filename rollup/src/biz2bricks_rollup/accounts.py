"""The operator's way in: the ``provision`` and ``grant`` commands of ``biz2bricks-rollup``.

Both are idempotent, so a deploy script or a runbook can repeat them: ``provision`` upserts the
organization's limits from its plan (counters and credits stay), and ``grant`` is keyed by its
grant id, by default one derived from its arguments, so that the same command twice grants once.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime
from typing import Final

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import PermanentError
from biz2bricks_core.usage_service import UsageService

__all__ = ["add_commands", "default_grant_id", "run_grant", "run_provision"]

# uuid5 namespace of the grant ids the command derives from its arguments.
GRANT_ID_NAMESPACE: Final = uuid.UUID("6f1d3c52-5b7e-4c1e-9a43-0d2b7b0c9e11")
EXIT_OK, EXIT_REFUSED = 0, 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``provision`` and ``grant`` subcommands."""
    provision = commands.add_parser(
        "provision",
        help="create or re-plan an organization (idempotent; counters and credits stay)",
        description="Create the organization and its usage limits from PLAN, or move it to "
        "PLAN. Running it again changes nothing.",
    )
    provision.add_argument("org", type=uuid.UUID, help="organization id (a UUID)")
    provision.add_argument("--plan", required=True, help="plan name, e.g. free, pro")
    provision.add_argument("--name", help="display name (default: the id)")
    grant = commands.add_parser(
        "grant",
        help="grant an organization credit tokens (idempotent on --grant-id)",
        description="Grant TOKENS of credit, spent after the plan's allowance. Without "
        "--grant-id the id is derived from the arguments, so the same command run twice "
        "grants once; give a new --grant-id for a second grant with the same arguments.",
    )
    grant.add_argument("org", type=uuid.UUID, help="organization id (a UUID)")
    grant.add_argument("tokens", type=int, help="tokens to grant (>= 1)")
    grant.add_argument("--expires-at", type=_moment, help="RFC 3339 (default: never)")
    grant.add_argument("--priority", type=int, default=10, help="lower burns first (10)")
    grant.add_argument("--reason", help="why (kept with the grant and its audit row)")
    grant.add_argument("--grant-id", type=uuid.UUID, help="default: derived from the arguments")


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"{value!r}: give a time zone (e.g. 2026-01-01T00:00:00Z)")
    return moment


def default_grant_id(args: argparse.Namespace) -> uuid.UUID:
    """The grant id of a command without ``--grant-id``: the same arguments, the same id."""
    expires = args.expires_at.isoformat() if args.expires_at else ""
    key = f"{args.org}|{args.tokens}|{expires}|{args.priority}|{args.reason or ''}"
    return uuid.uuid5(GRANT_ID_NAMESPACE, key)


async def run_provision(db: DatabaseManager, args: argparse.Namespace) -> int:
    """Provision ``args.org`` on ``args.plan``; print its limits as one JSON line."""
    service = UsageService(db)
    try:
        await service.provision_organization(args.org, plan=args.plan, name=args.name)
    except PermanentError as error:
        return _refused(error)
    snapshot = await service.get_usage(args.org)
    print(
        json.dumps(
            {
                "organization_id": str(args.org),
                "plan": snapshot.plan,
                "token_limit": snapshot.token_limit,
                "tokens_used_period": snapshot.tokens_used_period,
                "credits_remaining": snapshot.credits_remaining,
                "period_end": snapshot.period_end.isoformat(),
            }
        )
    )
    return EXIT_OK


async def run_grant(db: DatabaseManager, args: argparse.Namespace) -> int:
    """Grant the credits (once per grant id); print the grant as one JSON line."""
    grant_id = args.grant_id or default_grant_id(args)
    try:
        grant = await UsageService(db).grant_credits(
            args.org,
            args.tokens,
            expires_at=args.expires_at,
            priority=args.priority,
            reason=args.reason,
            grant_id=grant_id,
        )
    except PermanentError as error:
        return _refused(error)
    print(
        json.dumps(
            {
                "grant_id": str(grant.id),
                "organization_id": str(grant.organization_id),
                "tokens": grant.tokens,
                "remaining": grant.remaining,
                "priority": grant.priority,
                "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
                "reason": grant.reason,
            }
        )
    )
    return EXIT_OK


def _refused(error: PermanentError) -> int:
    """An unknown plan or organization, a conflicting grant id: one line, exit 2."""
    print(f"biz2bricks-rollup: {error}", file=sys.stderr)
    return EXIT_REFUSED
