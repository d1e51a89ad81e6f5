"""One warning per unpriced model per interval, naming the model and the events since."""

from __future__ import annotations

import logging

import pytest

from biz2bricks_consumer.pricing_cache import UnpricedLog


def _warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    return [
        (r.provider, r.model, r.events)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "pricing.unpriced_model"
    ]


def test_each_unpriced_model_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    log = UnpricedLog(interval_s=3600)
    batch = [("openai", "gpt-x", "unknown_model")] * 3 + [("acme", "m", "unknown_provider")]
    log.report(batch)
    log.report(batch)
    assert sorted(_warnings(caplog)) == [("acme", "m", 1), ("openai", "gpt-x", 3)]


def test_events_held_back_are_reported_when_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    log = UnpricedLog(interval_s=0.0)
    log.report([("openai", "gpt-x", "unknown_model")])
    log.report([("openai", "gpt-x", "unknown_model")] * 2)
    assert _warnings(caplog) == [("openai", "gpt-x", 1), ("openai", "gpt-x", 2)]
