"""UsageProducer through a process's life: close under an outage, fork, SIGTERM, credentials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from biz2bricks_producer import ProducerSettings, UsageProducer
from tests.conftest import PubSubNames
from tests.producer.test_producer import pull_all, record
from tests.threaded_proxy import ThreadedProxy

ROOT = Path(__file__).resolve().parents[2]


def run_script(code: str, names: PubSubNames, spool_dir: Path, **env: str) -> int:
    """Run ``code`` in a fresh interpreter with the test's topic; its return code."""
    environment = {
        **os.environ,
        "PUBSUB_PROJECT_ID": names.project_id,
        "USAGE_TOPIC": names.topic,
        "USAGE_SPOOL_DIR": str(spool_dir),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environment,
        timeout=90,
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode


def event_ids(messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
    return sorted(json.loads(data)["event_id"] for data, _ in messages)


@pytest.mark.fault
def test_close_during_an_outage_returns_in_time_and_spools_the_batch_in_retry(
    outage: ThreadedProxy, pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    # Given Pub/Sub down and a publish retry budget far beyond the close timeout
    settings = producer_settings.model_copy(update={"publish_timeout_s": 30.0})
    producer = UsageProducer(settings)
    ids = record(producer, uuid.uuid4(), 1500)
    time.sleep(0.3)  # a batch is now in retry inside the sender
    # When the producer is closed with 1 s to spare
    started = time.monotonic()
    producer.close(timeout=1.0)
    took = time.monotonic() - started
    # Then close kept its bound and everything is on disk for the next producer
    assert took < 3.0, took
    assert producer.stats()["spooled"] == 1500, producer.stats()
    outage.open()
    with UsageProducer(settings) as second:
        assert second.flush(timeout=60)
    assert event_ids(pull_all(pubsub_names.subscription_path, 1500)) == sorted(map(str, ids))


def test_events_recorded_after_close_are_spooled_not_lost(
    pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    producer = UsageProducer(producer_settings)
    producer.close(timeout=2)
    late = record(producer, uuid.uuid4(), 3)
    with UsageProducer(producer_settings) as second:
        assert second.flush(timeout=30)
    assert event_ids(pull_all(pubsub_names.subscription_path, 3)) == sorted(map(str, late))


def test_without_credentials_the_producer_starts_spools_and_publishes_once_they_work(
    monkeypatch: pytest.MonkeyPatch, pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    # Given no emulator and no usable credentials (a missing key file fails before any network)
    emulator = os.environ["PUBSUB_EMULATOR_HOST"]
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    # When the application starts and records usage, nothing raises
    producer = UsageProducer(producer_settings)
    try:
        ids = record(producer, uuid.uuid4(), 25)
        deadline = time.monotonic() + 30
        while producer.stats()["spooled"] < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = producer.stats()
        assert (stats["spooled"], stats["published"]) == (25, 0), stats
        assert stats["publish_errors"] >= 1
        # Then once Pub/Sub is reachable the spool is published
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
        assert producer.flush(timeout=60), producer.stats()
    finally:
        producer.close(timeout=5)
    assert event_ids(pull_all(pubsub_names.subscription_path, 25)) == sorted(map(str, ids))


FORK_SCRIPT = """
    import os, sys, uuid
    from biz2bricks_producer import UsageProducer
    producer = UsageProducer(batch_max_latency_ms=600000)  # nothing leaves before close
    def calls(n):
        return [str(producer.record_tokens(organization_id=uuid.uuid4(), provider="openai",
                model="gpt-4o", input_tokens=1, output_tokens=1)) for _ in range(n)]
    before = calls(40)
    pid = os.fork()
    if pid == 0:
        child = calls(60)
        producer.close(timeout=20)
        open(sys.argv[0] if False else os.environ["IDS"] + ".child", "w").write("\\n".join(child))
        os._exit(0 if producer.stats()["published"] == 60 else 3)
    _, status = os.waitpid(pid, 0)
    parent = calls(10)
    producer.close(timeout=20)
    open(os.environ["IDS"] + ".parent", "w").write("\\n".join(before + parent))
    sys.exit(os.waitstatus_to_exitcode(status) or (producer.stats()["published"] != 50))
"""


def test_a_forked_child_publishes_its_own_events_and_never_the_parents(
    pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids"
    code = run_script(FORK_SCRIPT, pubsub_names, tmp_path / "spool", IDS=str(ids_file))
    assert code == 0
    expected = sorted(
        ids_file.with_suffix(".child").read_text().split()
        + ids_file.with_suffix(".parent").read_text().split()
    )
    messages = pull_all(pubsub_names.subscription_path, 110)
    messages += pull_all(pubsub_names.subscription_path, 1, timeout_s=3)  # none twice
    assert event_ids(messages) == expected


SIGTERM_SCRIPT = """
    import os, signal, uuid
    from biz2bricks_producer import UsageProducer
    producer = UsageProducer(batch_max_latency_ms=600000)  # created at import, never closed
    ids = [str(producer.record_tokens(organization_id=uuid.uuid4(), provider="openai",
           model="gpt-4o", input_tokens=1, output_tokens=1)) for _ in range(200)]
    open(os.environ["IDS"], "w").write("\\n".join(ids))
    os.kill(os.getpid(), signal.SIGTERM)
    import time; time.sleep(30)
"""


def test_sigterm_with_the_default_handler_publishes_first_then_ends_the_process(
    pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids"
    code = run_script(SIGTERM_SCRIPT, pubsub_names, tmp_path / "spool", IDS=str(ids_file))
    assert code == -signal.SIGTERM  # still ended by the signal, as without the hook
    expected = sorted(ids_file.read_text().split())
    assert event_ids(pull_all(pubsub_names.subscription_path, 200)) == expected


LOCKED_SIGTERM_SCRIPT = """
    import os, signal, time, uuid
    from biz2bricks_producer import UsageProducer
    producer = UsageProducer(batch_max_latency_ms=600000, exit_flush_timeout_s=1)
    ids = [str(producer.record_tokens(organization_id=uuid.uuid4(), provider="openai",
           model="gpt-4o", input_tokens=1, output_tokens=1)) for _ in range(50)]
    open(os.environ["IDS"], "w").write("\\n".join(ids))
    with producer._pipeline.outbox.lock:  # SIGTERM lands inside record_tokens' lock
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    time.sleep(30)
"""


def test_sigterm_while_the_main_thread_holds_the_producer_lock_neither_hangs_nor_loses(
    pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids"
    code = run_script(LOCKED_SIGTERM_SCRIPT, pubsub_names, tmp_path / "spool", IDS=str(ids_file))
    assert code == -signal.SIGTERM
    # The exit bound passed while the lock was held: what was not published is in the spool.
    settings = ProducerSettings(
        project_id=pubsub_names.project_id, topic=pubsub_names.topic, spool_dir=tmp_path / "spool"
    )
    with UsageProducer(settings) as next_process:
        assert next_process.flush(timeout=30)
    expected = sorted(ids_file.read_text().split())
    assert event_ids(pull_all(pubsub_names.subscription_path, 50)) == expected


@pytest.mark.fault
def test_one_producer_replays_the_slots_of_two_that_ended(
    outage: ThreadedProxy, pubsub_names: PubSubNames, producer_settings: ProducerSettings
) -> None:
    # Given two producers (two workers) that spooled during an outage and ended
    settings = producer_settings.model_copy(update={"publish_timeout_s": 1.0})
    first, second = UsageProducer(settings), UsageProducer(settings)
    ids = record(first, uuid.uuid4(), 100) + record(second, uuid.uuid4(), 100)
    first.close(timeout=2)
    second.close(timeout=2)
    assert len(list(settings.spool_dir.glob("slot-*/*.spool"))) >= 2
    # When a single process comes back (fewer workers than before)
    outage.open()
    with UsageProducer(settings):
        deadline = time.monotonic() + 60
        while list(settings.spool_dir.glob("slot-*/*.spool")) and time.monotonic() < deadline:
            time.sleep(0.1)
    # Then it also replays the slot that no process took over
    assert event_ids(pull_all(pubsub_names.subscription_path, 200)) == sorted(map(str, ids))
