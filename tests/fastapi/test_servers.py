"""Real FastAPI apps under real servers: fork, SIGTERM and an outage lose no accepted event."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_devtools.localservices import find_free_port
from tests.conftest import PubSubNames
from tests.fastapi.conftest import Server, burst, replay_then_pull

Serve = Callable[..., Server]
SLOW_BATCHES = {"USAGE_BATCH_MAX_LATENCY_MS": "600000"}  # nothing is published before SIGTERM


@pytest.mark.fault
def test_gunicorn_preload_with_the_producer_made_before_fork_publishes_every_event_once(
    serve: Serve, pubsub_names: PubSubNames, spool_dir: Path
) -> None:
    # Given the README's careless app (producer made at import) forked into 2 workers
    server = serve(
        "gunicorn",
        "tests.fastapi.import_time_app:app",
        "--preload",
        "-w",
        "2",
        "-k",
        "uvicorn.workers.UvicornWorker",
        **SLOW_BATCHES,
    )
    # When 400 calls succeed and the server is stopped right after
    ids, _pids = burst(server.url, uuid.uuid4(), 400)
    assert server.stop() == 0, server.output()
    # Then every 200 response is one published event, none twice
    published = replay_then_pull(pubsub_names, spool_dir, len(ids))
    assert sorted(published) == sorted(ids), server.output()


@pytest.mark.fault
def test_uvicorn_workers_sigterm_right_after_a_burst_lose_nothing(
    serve: Serve, pubsub_names: PubSubNames, spool_dir: Path
) -> None:
    server = serve("uvicorn", "tests.fastapi.import_time_app:app", "--workers", "2", **SLOW_BATCHES)
    ids, _ = burst(server.url, uuid.uuid4(), 300)
    server.stop()
    published = replay_then_pull(pubsub_names, spool_dir, len(ids))
    assert sorted(published) == sorted(ids), server.output()


@pytest.mark.fault
def test_pubsub_down_and_exit_a_second_later_spools_every_event_for_the_next_process(
    serve: Serve, pubsub_names: PubSubNames, spool_dir: Path
) -> None:
    # Given Pub/Sub unreachable from the app
    server = serve(
        "uvicorn",
        "tests.fastapi.import_time_app:app",
        "--workers",
        "2",
        PUBSUB_EMULATOR_HOST=f"127.0.0.1:{find_free_port()}",
        USAGE_EXIT_FLUSH_TIMEOUT="2",
    )
    # When calls succeed and the app exits 1 s later
    ids, _ = burst(server.url, uuid.uuid4(), 300)
    import time

    time.sleep(1)
    server.stop()
    # Then everything is in the spool, and arrives once a new process replays it
    assert list(spool_dir.glob("slot-*/*.spool")), server.output()
    published = replay_then_pull(pubsub_names, spool_dir, len(ids))
    assert sorted(set(published)) == sorted(ids), server.output()


@pytest.mark.fault
async def test_the_lifespan_app_under_uvicorn_workers_checks_limits_and_loses_nothing(
    serve: Serve, pubsub_names: PubSubNames, spool_dir: Path, db: DatabaseManager
) -> None:
    org = uuid.uuid4()
    await UsageService(db).provision_organization(org, plan="business")
    server = serve("uvicorn", "tests.fastapi.lifespan_app:app", "--workers", "2", **SLOW_BATCHES)
    ids, _ = burst(server.url, org, 200)
    server.stop()
    published = replay_then_pull(pubsub_names, spool_dir, len(ids))
    assert sorted(published) == sorted(ids), server.output()
