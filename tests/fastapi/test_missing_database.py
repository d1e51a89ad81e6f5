"""An app whose database does not exist, or whose role does not: 503 or the documented
fail-open answer, never a 500 with a driver traceback."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from biz2bricks_core import DatabaseConfig, UsageServiceSettings
from biz2bricks_devtools.localservices import LocalService
from biz2bricks_fastapi import UsageDep
from tests.fastapi.test_integration import make_app, running


def refused(server: str, which: str) -> DatabaseConfig:
    """A config the server refuses: a database or a role it does not have."""
    url = make_url(server)
    url = (
        url.set(database="b2b_no_such_database")
        if which == "database"
        else url.set(username="b2b_no_such_role")
    )
    return DatabaseConfig(database_url=url.render_as_string(hide_password=False))


def with_usage_route(app: FastAPI) -> FastAPI:
    @app.get("/usage/{organization_id}")
    async def usage(organization_id: str, service: UsageDep) -> dict[str, int]:
        return {"used": (await service.get_usage(organization_id)).tokens_used_period}

    return app


@pytest.mark.parametrize("which", ["database", "role"])
async def test_the_token_check_fails_open_and_the_rest_answers_503(
    postgres_server: LocalService, which: str
) -> None:
    # Given an app on a database the server refuses, with the default decisions
    app = with_usage_route(
        make_app(producer=False, database=refused(postgres_server.address, which))
    )
    # When it is asked for each kind of answer
    async with running(app) as client:
        org = uuid.uuid4()
        responses: list[httpx.Response] = [
            await client.post(f"/calls/{org}"),
            await client.post(f"/uploads/{org}", params={"size_bytes": 1}),
            await client.get(f"/usage/{org}"),
            await client.get("/ready"),
            await client.get("/one"),
        ]
    # Then the token check fails open, and everything else is 503 naming the fix
    assert [r.status_code for r in responses] == [200, 503, 503, 503, 503]
    assert responses[1].json()["error"] == "database_unavailable_fail_closed"
    detail = responses[3].json()["detail"]
    assert ("createdb" if which == "database" else "createuser") in detail


async def test_the_token_check_fails_closed_when_so_configured(
    postgres_server: LocalService,
) -> None:
    app = make_app(
        producer=False,
        database=refused(postgres_server.address, "database"),
        service=UsageServiceSettings(token_check_fail_open=False),
    )
    async with running(app) as client:
        response = await client.post(f"/calls/{uuid.uuid4()}")
    assert response.status_code == 503
    assert response.json()["error"] == "database_unavailable_fail_closed"
