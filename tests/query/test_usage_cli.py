"""``biz2bricks-rollup usage``: the query's rows as a table, CSV and JSON."""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta

import pytest

from biz2bricks_core import DatabaseManager, UsageService
from biz2bricks_core.usage_export import row_json, rows_csv
from biz2bricks_rollup.__main__ import _parser
from biz2bricks_rollup.__main__ import main as rollup_main
from biz2bricks_rollup.usage_report import usage_report
from tests.factories import provisioned_org
from tests.query.test_usage_query import three_days
from tests.query.usage_data import insert_events, random_events


async def test_csv_json_and_table_carry_the_query_rows(db: DatabaseManager) -> None:
    # Given an organization with three days of usage
    org = await provisioned_org(db)
    first, now, end = three_days()
    await insert_events(db, org, random_events(random.Random(9), first, now, 120))
    rows = await UsageService(db).query_usage(
        org, start=first, end=end, window="day", group_by=["model", "operation"]
    )
    argv = ["usage", "--org", str(org), "--from", str(first.date())]
    argv += ["--to", str((end - timedelta(days=1)).date()), "--window", "day"]
    argv += ["--by", "model", "--by", "operation"]
    # When the command prints each format
    as_csv = await usage_report(db, _parser().parse_args([*argv, "--format", "csv"]))
    as_json = await usage_report(db, _parser().parse_args([*argv, "--format", "json"]))
    table = await usage_report(db, _parser().parse_args(argv))
    # Then each is the query's rows
    assert as_csv == rows_csv(rows, ["model", "operation"])
    assert json.loads(as_json) == [row_json(r) for r in rows]
    assert len(table.splitlines()) == len(rows) + 1
    assert table.splitlines()[0].split()[:4] == ["window_start", "window_end", "model", "operation"]


async def test_a_filter_keeps_only_its_events(db: DatabaseManager) -> None:
    org = await provisioned_org(db)
    first, now, end = three_days()
    await insert_events(db, org, random_events(random.Random(10), first, now, 60))
    args = ["usage", "--org", str(org), "--from", str(first.date()), "--filter", "model=gpt-4o"]
    report = json.loads(await usage_report(db, _parser().parse_args([*args, "--format", "json"])))
    [row] = await UsageService(db).query_usage(
        org, start=first, end=end, filters={"model": ["gpt-4o"]}
    )
    assert report == [row_json(row)]


def test_bad_arguments_exit_with_a_message(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    org = str(uuid.uuid4())
    assert rollup_main(["usage", "--org", org, "--filter", "model"]) == 2
    assert "--filter" in capsys.readouterr().err
    assert rollup_main(["usage", "--org", org, "--time-zone", "Mars/Olympus"]) == 2
    assert "--time-zone" in capsys.readouterr().err
    assert rollup_main(["usage", "--org", "nope"]) == 2
    assert "organization_id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rollup_main(["usage", "--org", org, "--by", "team"])
