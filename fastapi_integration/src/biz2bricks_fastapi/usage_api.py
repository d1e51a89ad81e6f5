"""``usage_router()``: the usage query over HTTP (JSON or CSV) and the usage dashboard page.

::

    app.include_router(usage_router(), dependencies=[Depends(your_auth)])

- ``GET /usage/{org_id}``: ``UsageService.query_usage`` with ``from``, ``to`` (RFC 3339, or a
  date: its midnight in ``time_zone``; ``[from, to)``, default this month), ``window``
  (hour, day, month), ``group_by`` (repeated), ``filter[dimension]=value`` (repeated; an empty
  value matches events without that dimension), ``time_zone`` (IANA, default UTC) and
  ``format`` (json, csv).
- ``GET /usage/{org_id}/summary``: the period's snapshot (``get_usage``) and the token
  allowance with live holds (``check_token_limit``); ``GET /usage/{org_id}/alerts``: the
  latest usage alerts.
- ``GET /usage/{org_id}/dashboard``: one HTML page drawn from those endpoints; its script and
  style are served from this package under ``/usage/{org_id}/dashboard/`` (no CDN).

Bad parameters answer 422 with FastAPI's error body, ``loc`` naming the parameter.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from importlib import resources
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import text

from biz2bricks_core.errors import InvalidArgumentError, UnknownOrganizationError
from biz2bricks_core.usage_export import cost_text, row_json, rows_csv
from biz2bricks_core.usage_service import UsageService
from biz2bricks_core.usage_windows import DIMENSIONS
from biz2bricks_fastapi._integration import UsageDep

__all__ = ["usage_router"]

Dimension = Literal["provider", "model", "user_id", "operation", "price_variant"]
ASSETS: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_LATEST_ALERTS = text(
    "SELECT id, period_start, metric, threshold_pct, used, allowance, created_at, published_at"
    " FROM usage_alerts WHERE organization_id = :org ORDER BY created_at DESC, threshold_pct DESC"
    " LIMIT :limit"
)
# The service's argument names, as the HTTP parameters spell them.
_PARAMETER_OF: Final = {"start": "from", "end": "to", "filters": "filter"}


def _invalid(parameter: str, message: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", parameter), "msg": message, "input": value}]
    )


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid("time_zone", f"unknown IANA time zone {name!r}", name) from None


def _moment(parameter: str, value: str, zone: ZoneInfo) -> datetime:
    """An RFC 3339 instant, a naive date-time (in ``zone``) or a date (its midnight in it)."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time.min, tzinfo=zone)
        moment = datetime.fromisoformat(value)
    except ValueError:
        message = "must be an RFC 3339 date-time or a YYYY-MM-DD date"
        raise _invalid(parameter, message, value) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _month_start(moment: datetime, zone: ZoneInfo, months_later: int = 0) -> datetime:
    local = moment.astimezone(zone).date().replace(day=1)
    month = local.month - 1 + months_later
    first = date(local.year + month // 12, month % 12 + 1, 1)
    return datetime.combine(first, time.min, tzinfo=zone)


def _filters(request: Request) -> dict[str, list[str | None]]:
    """``filter[dimension]=value`` parameters (repeated; empty value: no such dimension)."""
    found: dict[str, list[str | None]] = {}
    for key, value in request.query_params.multi_items():
        if not key.startswith("filter"):
            continue
        dimension = key[len("filter[") : -1] if key.startswith("filter[") else ""
        if not key.endswith("]") or dimension not in DIMENSIONS:
            raise _invalid(key, f"unknown filter; use filter[d]=value, d one of {DIMENSIONS}")
        found.setdefault(dimension, []).append(value or None)
    return found


def _service_error(error: InvalidArgumentError) -> RequestValidationError:
    """An InvalidArgumentError of the service, as a 422 naming the HTTP parameter."""
    message = str(error)
    name, _, _ = message.partition(":")
    head, bracket, rest = name.partition("[")
    parameter = _PARAMETER_OF.get(head, head) + bracket + rest
    return _invalid(parameter, message)


def usage_router(*, prefix: str = "/usage", tags: Sequence[str] = ("usage",)) -> APIRouter:
    """The usage API and dashboard; mount it behind the application's own auth."""
    router = APIRouter(prefix=prefix, tags=list(tags))

    @router.get("/{org_id}")
    async def get_usage_rows(
        org_id: uuid.UUID,
        request: Request,
        usage: UsageDep,
        from_: Annotated[str | None, Query(alias="from")] = None,
        to: str | None = None,
        window: Literal["hour", "day", "month"] | None = None,
        group_by: Annotated[list[Dimension] | None, Query()] = None,
        time_zone: str = "UTC",
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """Usage rows of the organization (JSON, or CSV with ``format=csv``)."""
        zone = _zone(time_zone)
        now = datetime.now(UTC)
        start = _moment("from", from_, zone) if from_ else _month_start(now, zone)
        try:
            end = _moment("to", to, zone) if to else _month_start(start, zone, months_later=1)
        except (ValueError, OverflowError):  # the default `to`: the month after year 9999's
            raise _invalid("from", "out of range: no month follows it", from_) from None
        groups = list(dict.fromkeys(group_by or []))
        filters = _filters(request)
        try:
            rows = await usage.query_usage(
                org_id,
                start=start,
                end=end,
                window=window,
                group_by=groups,
                filters=filters,
                time_zone=time_zone,
            )
        except InvalidArgumentError as error:
            raise _service_error(error) from None
        if format == "csv":
            return Response(
                rows_csv(rows, groups),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="usage-{org_id}.csv"'},
            )
        return JSONResponse(
            {
                "organization_id": str(org_id),
                "from": start.isoformat(),
                "to": end.isoformat(),
                "window": window,
                "group_by": groups,
                "filters": filters,
                "time_zone": time_zone,
                "rows": [row_json(r) for r in rows],
            }
        )

    @router.get("/{org_id}/summary")
    async def get_summary(org_id: uuid.UUID, usage: UsageDep) -> dict[str, Any]:
        """The period's usage (``get_usage``) and the allowance with live holds."""
        return await _summary(usage, org_id)

    @router.get("/{org_id}/alerts")
    async def get_alerts(
        org_id: uuid.UUID, usage: UsageDep, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> dict[str, Any]:
        """The organization's latest usage alerts, newest first."""
        async with usage.db.unavailable_as_error(), usage.db.engine.connect() as conn:
            rows = await conn.execute(_LATEST_ALERTS, {"org": org_id, "limit": limit})
            alerts = [
                {k: v.isoformat() if isinstance(v, datetime) else v for k, v in r._mapping.items()}
                for r in rows
            ]
        return {"organization_id": str(org_id), "alerts": [_ids_as_str(a) for a in alerts]}

    @router.get("/{org_id}/dashboard", response_class=HTMLResponse)
    async def get_dashboard(org_id: uuid.UUID) -> HTMLResponse:
        """The usage dashboard page of the organization."""
        return HTMLResponse(_asset("dashboard.html"), headers={"Cache-Control": "no-store"})

    @router.get("/{org_id}/dashboard/{asset}")
    async def get_dashboard_asset(org_id: uuid.UUID, asset: str) -> Response:
        """The dashboard's script and style, served from the package."""
        if asset not in ASSETS:
            raise HTTPException(404, f"no dashboard asset {asset!r}")
        return Response(_asset(asset), media_type=ASSETS[asset])

    return router


def _ids_as_str(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in alert.items()}


def _asset(name: str) -> str:
    return resources.files("biz2bricks_fastapi").joinpath("dashboard", name).read_text("utf-8")


async def _summary(usage: UsageService, org_id: uuid.UUID) -> dict[str, Any]:
    try:
        snapshot = await usage.get_usage(org_id)
    except UnknownOrganizationError as error:
        raise HTTPException(404, str(error)) from None
    decision = await usage.check_token_limit(org_id)
    return {
        "organization_id": str(org_id),
        "plan": snapshot.plan,
        "period_start": snapshot.period_start.isoformat(),
        "period_end": snapshot.period_end.isoformat(),
        "tokens_used_period": snapshot.tokens_used_period,
        "token_limit": snapshot.token_limit,
        "credits_remaining": snapshot.credits_remaining,
        "grants_consumed_period": snapshot.grants_consumed_period,
        "cost_usd_period": cost_text(snapshot.cost_usd_period),
        "unpriced_events_period": snapshot.unpriced_events_period,
        "storage_used_bytes": snapshot.storage_used_bytes,
        "storage_limit_bytes": snapshot.storage_limit_bytes,
        "counters_updated_at": None
        if snapshot.counters_updated_at is None
        else snapshot.counters_updated_at.isoformat(),
        # The token check's view: allowance = plan + grants; reserved = live holds.
        "allowance": decision.limit,
        "tokens_reserved": decision.reserved,
        "tokens_remaining": decision.remaining,
    }
