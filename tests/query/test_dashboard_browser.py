"""The usage dashboard in real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): no failed request, no console error, and the period's numbers equal get_usage.

Chromium missing: skipped locally, failed under REQUIRE_SERVICES=1 (CI installs it).
``DASHBOARD_SCREENSHOT=path.png`` also saves a screenshot of the page (docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import provisioned_org
from tests.query.usage_data import insert_events, random_events, settle_watermarks
from tests.support import require_services

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1500",
]


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "chromium and chromium-driver are not installed (apt-get install both)"
        if require_services():
            pytest.fail(f"REQUIRE_SERVICES=1 and {message}", pytrace=False)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, its console and network logs recorded."""
    chromium, driver_path = _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def failed_requests(driver: Any) -> list[str]:
    """Requests that failed or answered >= 400, from Chromium's performance log."""
    failures = []
    urls: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            url = urls.get(params["requestId"], params["requestId"])
            failures.append(f"{params.get('errorText')}: {params.get('type')} {url}")
        elif message["method"] == "Network.responseReceived":
            response = params["response"]
            if response["status"] >= 400:
                failures.append(f"{response['status']} {response['url']}")
    return failures


async def seeded_org(db: DatabaseManager) -> uuid.UUID:
    """An organization with a month of usage, a busy current period (past its 50% alert),
    credits and a call in flight (a live hold)."""
    usage = UsageService(db)
    org = await provisioned_org(db, plan="starter")
    await usage.grant_credits(org, 500_000, reason="welcome credits")
    now = datetime.now(UTC)
    month = datetime.combine(now.date().replace(day=1), time.min, tzinfo=UTC)
    first = min(month, now - timedelta(days=29))
    rng = random.Random(2026)
    await insert_events(db, org, random_events(rng, first, now - timedelta(minutes=1), 900))
    busy = max(month, now - timedelta(hours=36))
    await insert_events(db, org, random_events(rng, busy, now - timedelta(minutes=1), 400))
    await run_rollup(db, [first.date() + timedelta(days=n) for n in range(5)], wait=True)
    await settle_watermarks(db)
    hold = await usage.reserve_tokens(org, 12_000)
    assert hold.allowed
    return org


async def test_the_dashboard_loads_cleanly_and_shows_the_periods_numbers(
    db: DatabaseManager, usage_server: str, browser: Any
) -> None:
    # Given an organization with usage, credits, alerts and a call in flight
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    org = await seeded_org(db)
    usage = UsageService(db)
    snapshot = await usage.get_usage(org)
    decision = await usage.check_token_limit(org)
    # When its dashboard is opened (in a tab that has left Chromium's start page, whose own
    # requests are drained from the logs first)
    browser.get("about:blank")
    browser.get_log("performance")
    browser.get_log("browser")
    browser.get(f"{usage_server}/usage/{org}/dashboard")
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
            or "Could not" in d.find_element(By.ID, "status").text
        )
    )
    shot = os.environ.get("DASHBOARD_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)
    # Then nothing failed, nothing was logged as an error
    assert failed_requests(browser) == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    def shown(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).get_attribute("data-value"))

    # And the period's numbers are get_usage's (and the token check's, for the holds)
    assert shown("tokens-used") == str(snapshot.tokens_used_period)
    assert shown("token-limit") == str(snapshot.token_limit)
    assert shown("credits-remaining") == str(snapshot.credits_remaining)
    assert shown("unpriced-events") == str(snapshot.unpriced_events_period)
    assert shown("cost") == format(snapshot.cost_usd_period.normalize(), "f")
    assert shown("allowance") == str(decision.limit)
    assert shown("tokens-reserved") == str(decision.reserved) == "12000"
    assert browser.find_element(By.ID, "tokens-used").text == f"{snapshot.tokens_used_period:,}"
    # And the chart, the top tables and the alerts are drawn
    assert browser.find_elements(By.CSS_SELECTOR, "#daily svg rect")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top-users tbody tr")) >= 5
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top-operations tbody tr")) >= 4
    assert browser.find_elements(By.CSS_SELECTOR, "#alerts tbody tr td")
