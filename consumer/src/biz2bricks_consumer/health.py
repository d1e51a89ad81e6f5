"""/healthz, /readyz and /metrics of the worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_core.httpserver import HttpRequest, HttpResponse, HttpServer

ReadinessCheck = Callable[[], Awaitable[None]]


class HealthServer(HttpServer):
    """Liveness, readiness (every check passes within 3 s) and Prometheus metrics."""

    def __init__(
        self, metrics: ConsumerMetrics, checks: dict[str, ReadinessCheck], host: str, port: int
    ) -> None:
        super().__init__(self._route, host, port)
        self._metrics = metrics
        self._checks = checks

    async def _route(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return HttpResponse(200, b'{"status":"alive"}')
        if request.path == "/readyz":
            return await self._readiness()
        if request.path == "/metrics":
            return HttpResponse(200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST)
        return HttpResponse(404, b'{"error":"not found"}')

    async def _readiness(self) -> HttpResponse:
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), timeout=3)
                results[name] = "ok"
            except Exception as error:
                results[name] = f"{type(error).__name__}: {error}"[:300]
        status = 200 if all(v == "ok" for v in results.values()) else 503
        return HttpResponse(status, json.dumps(results).encode())
