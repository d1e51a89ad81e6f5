"""Run the whole usage pipeline once, on real services, and check that it adds up.

Starts (or finds) PostgreSQL and the Pub/Sub emulator, applies the migrations, provisions
organizations on different plans, records token events through UsageProducer (with retried
duplicates, invalid calls and poison messages, as real traffic has), runs the consumer until
idle, runs the rollup, prints usage against limits, limit decisions, daily summaries and
rejects, and checks every counter against its events. Exit code 0 when every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.cloud.pubsub_v1 import PublisherClient
from sqlalchemy import text

from biz2bricks_consumer import ConsumerSettings, Worker, ensure_topic_and_subscription
from biz2bricks_core import DatabaseConfig, DatabaseManager, UsageService
from biz2bricks_producer import ProducerSettings, UsageProducer
from biz2bricks_rollup import find_drift, run_rollup
from demo._dashboard import serve_dashboard
from demo._report import Progress, table
from demo._services import ServiceUnavailableError, start_services

PROJECT = "biz2bricks-demo"
PLANS = ["free", "starter", "pro", "business"]
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-flash"),
]


def record_traffic(
    topic: str, orgs: list[uuid.UUID], n_events: int, spool_dir: Path
) -> dict[str, int]:
    """Record events as the AI service would, plus duplicates, bad calls and poison."""
    now = datetime.now(UTC)
    settings = ProducerSettings(project_id=PROJECT, topic=topic, spool_dir=spool_dir)
    progress = Progress("recording events", n_events)
    with UsageProducer(settings) as producer:
        for i in range(n_events):
            provider, model = MODELS[(i // len(orgs)) % len(MODELS)]
            input_tokens = 200 + (i * 37) % 1000
            when = now - timedelta(days=1) if i % 10 == 0 else now - timedelta(seconds=i % 600)
            kwargs: dict[str, Any] = dict(
                organization_id=orgs[i % len(orgs)],
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                output_tokens=50 + (i * 13) % 250,
                cache_read_tokens=input_tokens // 2 if i % 3 == 0 else 0,
                operation="summarize" if i % 2 else "extract",
                occurred_at=when,
            )
            event_id = producer.record_tokens(**kwargs)
            if i % 50 == 0:  # the caller retried: same event_id, must count once
                producer.record_tokens(**kwargs, event_id=event_id)
            if i % 100 == 0:
                progress.update(i)
        progress.finish(n_events)
        # Calls a buggy caller makes: rejected by the producer, never published.
        producer.record_tokens(
            organization_id=orgs[0],
            provider="openai",
            model="gpt-4o",
            input_tokens=-5,
            output_tokens=1,
        )
        producer.record_tokens(
            organization_id=orgs[0],
            provider="openai",
            model="gpt-4o",
            input_tokens=10,
            cache_read_tokens=20,
            output_tokens=1,
        )
        producer.record_tokens(
            organization_id="not-a-uuid",
            provider="openai",
            model="gpt-4o",
            input_tokens=1,
            output_tokens=1,
        )
        # Valid by the contract, but for an organization nobody provisioned.
        stranger = uuid.uuid4()
        for _ in range(2):
            producer.record_tokens(
                organization_id=stranger,
                provider="openai",
                model="gpt-4o",
                input_tokens=10,
                output_tokens=1,
            )
        if not producer.flush(timeout=60):
            raise RuntimeError("the producer could not publish everything within 60 s")
        stats = producer.stats()
    publish_poison(topic)
    return {
        "recorded": n_events,
        "duplicates": n_events // 50 + (1 if n_events % 50 else 0),
        "producer_rejected": stats["rejected"],
        # Published directly, or spooled (in-flight cap, a slow publish) and replayed later;
        # plus the three poison messages.
        "published": stats["published"] + stats["replayed"] + 3,
        "replayed": stats["replayed"],
        "dropped": stats["dropped"],
    }


def publish_poison(topic: str) -> None:
    """Messages from a broken publisher: the consumer must keep them as rejects."""
    client = PublisherClient()
    path = f"projects/{PROJECT}/topics/{topic}"
    attrs = {"event_type": "llm.tokens", "schema_version": "1"}
    future_event = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "organization_id": str(uuid.uuid4()),
            "occurred_at": (datetime.now(UTC) + timedelta(hours=3)).isoformat(),
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 1,
            "output_tokens": 1,
        }
    )
    for data, attributes in [
        (b"{truncated", attrs),
        (b"{}", {**attrs, "schema_version": "9"}),
        (future_event.encode(), attrs),
    ]:
        client.publish(path, data, **attributes).result(timeout=30)
    client.stop()


async def consume(settings: ConsumerSettings, db: DatabaseManager, expected: int) -> Worker:
    """Run the consumer until idle, with a progress bar of settled messages."""
    worker = Worker(settings, db)
    task = asyncio.create_task(worker.run())
    progress = Progress("consuming", expected)
    metrics = worker.metrics

    def settled() -> int:
        rejects = sum(
            s.value
            for m in metrics.rejects.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        return int(
            metrics.value("usage_consumer_events_inserted_total")
            + metrics.value("usage_consumer_duplicates_total")
            + rejects
        )

    while not task.done():
        progress.update(settled())
        await asyncio.sleep(0.1)
    await task
    progress.finish(settled())
    worker.source.close()
    return worker


async def report(
    db: DatabaseManager,
    orgs: list[uuid.UUID],
    names: dict[uuid.UUID, str],
    traffic: dict[str, int],
    worker: Worker,
) -> bool:
    """Print the tables and run the checks; True when every check held."""
    service = UsageService(db)
    rows, decisions = [], []
    for org in orgs:
        usage = await service.get_usage(org)
        decision = await service.check_token_limit(org, estimated_tokens=2_000)
        limit = usage.token_limit
        rows.append(
            [
                names[org],
                usage.plan,
                usage.tokens_used_period,
                "unlimited" if limit is None else limit,
                f"{100 * usage.tokens_used_period / limit:.0f}%" if limit else "-",
                f"${usage.cost_usd_period:.4f}",
            ]
        )
        decisions.append(
            [
                names[org],
                decision.allowed,
                decision.reason,
                decision.used,
                "unlimited" if decision.remaining is None else decision.remaining,
            ]
        )
    table(
        "Usage this period against limits",
        ["organization", "plan", "tokens used", "token limit", "% of plan", "cost (USD)"],
        rows,
    )
    table(
        "check_token_limit(org, estimated_tokens=2000)",
        ["organization", "allowed", "reason", "tokens used", "tokens left"],
        decisions,
    )
    async with db.engine.connect() as conn:
        summaries = (
            await conn.execute(
                text(
                    "SELECT organization_id, day, provider, model, request_count,"
                    " input_tokens + output_tokens AS tokens, cost_usd FROM usage_daily_summaries"
                    " WHERE organization_id = ANY(:o)"
                    " ORDER BY day, organization_id, provider, model"
                ),
                {"o": orgs},
            )
        ).all()
        rejects = (
            await conn.execute(
                text(
                    "SELECT reason_code, min(reason) AS reason, count(*) AS n"
                    " FROM usage_event_rejects"
                    " GROUP BY reason_code ORDER BY reason_code"
                )
            )
        ).all()
        stored = (
            await conn.execute(
                text("SELECT count(*) FROM usage_events WHERE organization_id = ANY(:o)"),
                {"o": orgs},
            )
        ).scalar_one()
        summary_mismatch = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM ("
                    " SELECT organization_id, CAST(timezone('UTC', occurred_at) AS date) AS day,"
                    "  provider, model, count(*) AS request_count, sum(cost_usd) AS cost_usd"
                    "  FROM usage_events WHERE organization_id = ANY(:o) GROUP BY 1, 2, 3, 4"
                    " EXCEPT SELECT organization_id, day, provider, model, request_count, cost_usd"
                    "  FROM usage_daily_summaries WHERE organization_id = ANY(:o)) missing"
                ),
                {"o": orgs},
            )
        ).scalar_one()
    position = {org: i for i, org in enumerate(orgs)}
    summaries = sorted(
        summaries, key=lambda r: (r.day, position[r.organization_id], r.provider, r.model)
    )
    table(
        "Daily summaries (by day, organization, provider, model)",
        ["day", "organization", "provider", "model", "requests", "tokens used", "cost (USD)"],
        [
            [
                r.day,
                names[r.organization_id],
                r.provider,
                r.model,
                r.request_count,
                r.tokens,
                "-" if r.cost_usd is None else f"${r.cost_usd:.4f}",
            ]
            for r in summaries
        ],
    )
    table(
        "Rejected messages (kept with their raw bytes), by reason code",
        ["reason code", "messages", "first reason, in full"],
        [[r.reason_code, r.n, r.reason] for r in rejects],
        wrap={2: 64},
    )
    drift = [d for d in await find_drift(db) if d.organization_id in names]
    inserted = int(worker.metrics.value("usage_consumer_events_inserted_total"))
    duplicates = int(worker.metrics.value("usage_consumer_duplicates_total"))
    rejected = sum(r.n for r in rejects)
    checks = [
        ("every counter equals the sum of its events (reconcile)", not drift),
        (
            f"one row per event: {stored:,} stored of {traffic['recorded']:,} recorded",
            stored == traffic["recorded"],
        ),
        (
            f"retries counted once: {duplicates:,} duplicates of {traffic['duplicates']:,} retried",
            duplicates == traffic["duplicates"],
        ),
        (
            f"nothing vanished: {inserted:,} + {duplicates:,} + {rejected} rejects = "
            f"{traffic['published']:,} published ({traffic['replayed']:,} of them through the "
            f"spool), {traffic['dropped']} dropped",
            inserted + duplicates + rejected == traffic["published"] and not traffic["dropped"],
        ),
        ("daily summaries equal a GROUP BY over the events", summary_mismatch == 0),
        (
            f"producer rejected {traffic['producer_rejected']} invalid calls without raising",
            traffic["producer_rejected"] == 3,
        ),
    ]
    print("\nChecks")
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    return all(ok for _, ok in checks)


async def pipeline(url: str, n_events: int, n_orgs: int, spool: Path) -> tuple[bool, uuid.UUID]:
    db = DatabaseManager(DatabaseConfig(database_url=url))
    suffix = uuid.uuid4().hex[:8]
    settings = ConsumerSettings(
        project_id=PROJECT,
        topic=f"usage-events-{suffix}",
        subscription=f"usage-consumer-{suffix}",
        exit_when_idle_s=2.0,
        health_port=0,
    )
    ensure_topic_and_subscription(settings)
    service = UsageService(db)
    orgs, names = [], {}
    for i in range(n_orgs):
        org = uuid.uuid4()
        plan = PLANS[i % len(PLANS)]
        await service.provision_organization(org, plan=plan, name=f"acme-{plan}-{i}")
        orgs.append(org)
        names[org] = f"org{i + 1}-{plan}"
    started = time.perf_counter()
    traffic = await asyncio.to_thread(record_traffic, settings.topic, orgs, n_events, spool)
    worker = await consume(settings, db, traffic["published"])
    today = datetime.now(UTC).date()
    await run_rollup(db, [today - timedelta(days=1), today], wait=True)
    print(f"pipeline ran in {time.perf_counter() - started:.1f}s")
    try:
        return await report(db, orgs, names, traffic, worker), orgs[0]
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--events", type=int, default=5000, help="events to record (>= 50)")
    parser.add_argument("--orgs", type=int, default=4, help="organizations (>= 2)")
    parser.add_argument(
        "--serve", action="store_true", help="then serve the usage dashboard until Enter"
    )
    parser.add_argument("--port", type=int, help="the dashboard's port (default: a free one)")
    args = parser.parse_args(argv)
    if args.events < 50 or args.orgs < 2:
        parser.error("--events must be >= 50 and --orgs >= 2")
    logging.basicConfig(level=logging.ERROR)
    with ExitStack() as stack:
        try:
            url = start_services(stack, PROJECT)
        except ServiceUnavailableError as error:
            print(f"demo: {error}", file=sys.stderr)
            return 2
        spool = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ok, org = asyncio.run(pipeline(url, args.events, args.orgs, spool))
        print("\nall checks held" if ok else "\nSOME CHECKS FAILED")
        if args.serve:
            serve_dashboard(url, org, args.port)
        else:
            print(
                f"usage dashboard of org1: /usage/{org}/dashboard"
                " (`bash scripts/demo.sh --serve` serves it at http://127.0.0.1:PORT"
                " while the demo's services run)"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
