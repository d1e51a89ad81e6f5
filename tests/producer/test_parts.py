"""The producer's parts through their public interfaces: process hooks, spool writer, spool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from biz2bricks_producer import ProducerSettings
from biz2bricks_producer.spool import Spool, decode_line, encode_line

ROOT = Path(__file__).resolve().parents[2]

HOOKS_SCRIPT = """
    import os, signal, sys, time
    from biz2bricks_producer import _lifecycle

    class Settings:
        exit_flush_timeout_s = 1.0

    class PublicOnly:  # no attribute but the public hooks: a private access raises
        __slots__ = ("__weakref__", "calls", "settings")
        def __init__(self):
            self.calls, self.settings = [], Settings()
        def before_fork(self): self.calls.append("before_fork")
        def after_fork_in_parent(self): self.calls.append("after_fork_in_parent")
        def after_fork_in_child(self): self.calls.append("after_fork_in_child")
        def on_sigterm(self): self.calls.append("on_sigterm")
        def close(self, timeout=None): self.calls.append("close")

    producer = PublicOnly()
    _lifecycle.register(producer)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if producer.calls == ["before_fork", "after_fork_in_child"] else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
"""


def test_fork_and_sigterm_hooks_call_only_the_producers_public_methods(tmp_path: Path) -> None:
    # Given an object with nothing but the producer's public hooks, registered as a producer
    # When the process forks and then receives SIGTERM
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HOOKS_SCRIPT)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
        capture_output=True,
        text=True,
    )
    # Then parent and child each saw their hook, SIGTERM drained it, and nothing failed
    assert "Traceback" not in done.stderr, done.stderr
    assert "failed" not in done.stderr, done.stderr
    assert done.returncode == -15, (done.returncode, done.stderr)


def test_a_spool_line_is_the_json_object_earlier_versions_wrote(tmp_path: Path) -> None:
    attributes = {"event_type": "llm.tokens", "odd": 'quote " newline \n é'}
    line = encode_line(b"\x00body\xff", attributes)
    assert json.loads(line) == {"d": "AGJvZHn/", "a": attributes}
    assert decode_line(line) == (b"\x00body\xff", attributes)


def test_spool_appends_across_segments_and_reads_back_in_chunks_in_order(tmp_path: Path) -> None:
    # Given segments of 1 KiB and 100 lines of about 100 bytes
    spool = Spool(tmp_path, max_bytes=1024**2, segment_bytes=1024)
    messages = [(f"{i:080d}".encode(), {"n": str(i)}) for i in range(100)]
    # When they are appended in one call and read back 7 at a time
    written, dropped = spool.append([encode_line(d, a) for d, a in messages])
    spool.seal()
    read = [
        message
        for segment in spool.sealed_segments()
        for chunk, corrupt in Spool.read_chunks(segment, 7)
        for message in chunk
        if not corrupt
    ]
    # Then nothing was dropped, the segments rotated, and every line came back in order
    assert (written, dropped) == (100, 0)
    assert len(list(spool.sealed_segments())) > 1
    assert read == messages
    spool.close()


def test_outage_events_wait_in_memory_until_the_writers_round(tmp_path: Path) -> None:
    # Given a producer whose writer writes every 1.5 s, while Pub/Sub is unreachable
    from biz2bricks_producer import UsageProducer

    settings = ProducerSettings(
        project_id="p",
        topic="t",
        spool_dir=tmp_path / "spool",
        spool_fsync_interval_ms=1500,
        max_in_flight_messages=1,
        publish_timeout_s=0.5,
    )
    producer = UsageProducer(settings)
    try:
        # When events are refused by the outbox (cap of 1 in flight)
        for _ in range(20):
            producer.record_tokens(
                organization_id="00000000-0000-0000-0000-000000000001",
                provider="openai",
                model="gpt-4o",
                input_tokens=1,
                output_tokens=1,
            )
        # Then the caller wrote nothing itself: they wait for the writer, which spools them all
        assert producer.stats()["spool_queue"] >= 19
        deadline = time.monotonic() + 10
        while producer.stats()["spooled"] < 19 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert producer.stats()["spooled"] >= 19
    finally:
        producer.close(timeout=1)
