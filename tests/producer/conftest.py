"""Fixtures of the producer tests: settings on the test's topic, and an outage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from biz2bricks_devtools.localservices import LocalService, find_free_port
from biz2bricks_producer import ProducerSettings
from tests.conftest import PubSubNames
from tests.threaded_proxy import ThreadedProxy


@pytest.fixture
def producer_settings(pubsub_names: PubSubNames, tmp_path: Path) -> ProducerSettings:
    return ProducerSettings(
        project_id=pubsub_names.project_id,
        topic=pubsub_names.topic,
        spool_dir=tmp_path / "spool",
        publish_timeout_s=2.0,
        replay_interval_s=0.5,
    )


@pytest.fixture
def outage(
    monkeypatch: pytest.MonkeyPatch, pubsub_emulator: LocalService, pubsub_names: PubSubNames
) -> Iterator[ThreadedProxy]:
    """PUBSUB_EMULATOR_HOST aimed at a proxy of the emulator that starts closed (an outage).

    Depends on pubsub_names so that the topic and subscription exist before the outage.
    """
    host, port = pubsub_emulator.address.rsplit(":", 1)
    proxy = ThreadedProxy((host, int(port)), find_free_port())
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{proxy.port}")
    yield proxy
    proxy.close()
