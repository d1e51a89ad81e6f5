"""usage_router() over a real server: JSON and CSV equal query_usage; 422 names the parameter."""

from __future__ import annotations

import csv
import io
import random
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.usage_export import row_json, rows_csv
from biz2bricks_rollup.rollup import run_rollup
from tests.factories import provisioned_org
from tests.query.test_usage_query import three_days
from tests.query.usage_data import USERS, insert_events, random_events, settle_watermarks

CASES: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
    ({}, []),
    ({"window": "day", "group_by": ["model"]}, [("window", "day"), ("group_by", "model")]),
    (
        {"window": "hour", "group_by": ["user_id", "operation"], "time_zone": "Asia/Kolkata"},
        [("window", "hour"), ("group_by", "user_id"), ("group_by", "operation")],
    ),
    (
        {"group_by": ["provider"], "filters": {"model": ["gpt-4o", "acme-docs-ft-2"]}},
        [
            ("group_by", "provider"),
            ("filter[model]", "gpt-4o"),
            ("filter[model]", "acme-docs-ft-2"),
        ],
    ),
    (
        {
            "window": "month",
            "group_by": ["operation"],
            "filters": {"user_id": [str(USERS[1]), None]},
        },
        [
            ("window", "month"),
            ("group_by", "operation"),
            ("filter[user_id]", str(USERS[1])),
            ("filter[user_id]", ""),
        ],
    ),
]


@pytest.fixture(scope="module")
async def org_with_usage(db: DatabaseManager) -> uuid.UUID:
    org = await provisioned_org(db)
    first, now, _ = three_days()
    await insert_events(db, org, random_events(random.Random(5), first, now, 300))
    await run_rollup(db, [first.date()], wait=True)
    await settle_watermarks(db)
    return org


@pytest.mark.parametrize(("kwargs", "params"), CASES)
async def test_json_and_csv_equal_query_usage(
    db: DatabaseManager,
    usage_server: str,
    org_with_usage: uuid.UUID,
    kwargs: dict[str, Any],
    params: list[tuple[str, str]],
) -> None:
    # Given the service's own answer
    first, _, end = three_days()
    time_zone = kwargs.get("time_zone", "UTC")
    rows = await UsageService(db).query_usage(org_with_usage, start=first, end=end, **kwargs)
    assert rows
    query = [("from", first.isoformat()), ("to", end.isoformat()), ("time_zone", time_zone)]
    query += params
    async with httpx.AsyncClient(base_url=usage_server) as client:
        # When the router is asked in JSON and in CSV
        as_json = await client.get(f"/usage/{org_with_usage}", params=query)
        as_csv = await client.get(f"/usage/{org_with_usage}", params=[*query, ("format", "csv")])
    # Then both carry exactly the same rows
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert body["rows"] == [row_json(r) for r in rows]
    assert body["time_zone"] == time_zone
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    group_by = kwargs.get("group_by", [])
    assert as_csv.text == rows_csv(rows, group_by)
    parsed = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [int(r["total_tokens"]) for r in parsed] == [r.total_tokens for r in rows]


async def test_a_date_means_its_midnight_in_the_time_zone(
    db: DatabaseManager, usage_server: str, org_with_usage: uuid.UUID
) -> None:
    first, _, end = three_days()
    async with httpx.AsyncClient(base_url=usage_server) as client:
        by_date = await client.get(
            f"/usage/{org_with_usage}",
            params={"from": first.date().isoformat(), "to": end.date().isoformat()},
        )
    [row] = await UsageService(db).query_usage(org_with_usage, start=first, end=end)
    assert by_date.json()["rows"] == [row_json(row)]


BAD = [
    ({"window": "week"}, "window"),
    ({"from": "yesterday"}, "from"),
    ({"to": "2026-13-01"}, "to"),
    ({"group_by": "team"}, "group_by"),
    ({"filter[team]": "a"}, "filter[team]"),
    ({"filter[user_id]": "not-a-uuid"}, "filter[user_id]"),
    ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ({"format": "xml"}, "format"),
    ({"from": "2026-02-01", "to": "2026-01-01"}, "to"),
    ({"from": "2020-01-01", "to": "2026-01-01", "window": "hour"}, "window"),
    ({"from": "0001-01-01", "to": "2026-01-01"}, "from"),
    ({"from": "2026-01-01", "to": "9999-12-31"}, "to"),
    ({"from": "9999-12-30", "time_zone": "Pacific/Kiritimati"}, "from"),
]


@pytest.mark.parametrize(("params", "named"), BAD)
async def test_a_bad_parameter_answers_422_naming_it(
    usage_server: str, params: dict[str, str], named: str
) -> None:
    async with httpx.AsyncClient(base_url=usage_server) as client:
        response = await client.get(f"/usage/{uuid.uuid4()}", params=params)
    assert response.status_code == 422, response.text
    assert [d["loc"][:2] for d in response.json()["detail"]] == [["query", named]]


async def test_a_bad_organization_id_answers_422(usage_server: str) -> None:
    async with httpx.AsyncClient(base_url=usage_server) as client:
        response = await client.get("/usage/not-an-id")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "org_id"]


async def test_summary_and_alerts_answer_for_the_dashboard(
    db: DatabaseManager, usage_server: str, org_with_usage: uuid.UUID
) -> None:
    snapshot = await UsageService(db).get_usage(org_with_usage)
    async with httpx.AsyncClient(base_url=usage_server) as client:
        summary = (await client.get(f"/usage/{org_with_usage}/summary")).json()
        alerts = await client.get(f"/usage/{org_with_usage}/alerts")
        unknown = await client.get(f"/usage/{uuid.uuid4()}/summary")
    assert summary["tokens_used_period"] == snapshot.tokens_used_period
    assert alerts.status_code == 200
    assert unknown.status_code == 404
    assert timedelta(0) < snapshot.period_end - snapshot.period_start
