"""The consumer's command line: setup creates what the worker needs; missing pieces are named."""

from __future__ import annotations

import os
import subprocess
import sys

from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from biz2bricks_devtools.localservices import LocalService
from tests.support import unique_name


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "biz2bricks_consumer", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_creates_topic_subscription_and_dead_letter_topic(
    pubsub_emulator: LocalService,
) -> None:
    topic, subscription = unique_name("setup"), unique_name("setup-sub")
    env = {"USAGE_TOPIC": topic, "USAGE_SUBSCRIPTION": subscription}
    first = run("setup", **env)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    again = run("setup", **env)
    assert again.returncode == 0, again.stderr
    assert "exists" in again.stdout
    project = os.environ["PUBSUB_PROJECT_ID"]
    with SubscriberClient() as subscriber:
        created = subscriber.get_subscription(
            subscription=f"projects/{project}/subscriptions/{subscription}"
        )
    assert created.topic == f"projects/{project}/topics/{topic}"
    assert created.ack_deadline_seconds == 60
    publisher = PublisherClient()
    publisher.get_topic(topic=f"projects/{project}/topics/{topic}-dead-letter")
    publisher.transport.close()


def test_a_missing_subscription_is_named_with_the_fix(
    pubsub_emulator: LocalService, database_url: str
) -> None:
    result = run(
        "--exit-when-idle", "1", USAGE_SUBSCRIPTION=unique_name("absent"), DATABASE_URL=database_url
    )
    assert result.returncode == 2
    assert "consumer.subscription_missing" in result.stderr
    assert "biz2bricks-consumer setup" in result.stderr


def test_a_missing_project_setting_names_the_variable() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    }
    result = subprocess.run(
        [sys.executable, "-m", "biz2bricks_consumer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PUBSUB_PROJECT_ID" in result.stderr


def test_tune_gc_freezes_the_start_up_heap_and_collects_less_often() -> None:
    # In a child process: the setting is process-wide.
    script = (
        "import gc\n"
        "from biz2bricks_consumer.worker import GC_YOUNG_THRESHOLD, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "after = gc.get_threshold()\n"
        "assert after == (GC_YOUNG_THRESHOLD, *before[1:]), (before, after)\n"
        "assert GC_YOUNG_THRESHOLD > before[0]\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
