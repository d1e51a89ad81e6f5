"""/healthz, /readyz and /metrics of the worker, served by aiohttp."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_core.served import ServedApp, alive

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_TIMEOUT_S = 3.0


class HealthServer:
    """Liveness, readiness (every check passes within 3 s) and Prometheus metrics."""

    def __init__(
        self, metrics: ConsumerMetrics, checks: dict[str, ReadinessCheck], host: str, port: int
    ) -> None:
        self._metrics = metrics
        self.checks = checks
        app = web.Application()
        app.router.add_get("/healthz", alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        self._served = ServedApp(app, host, port)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return self._served.port

    async def start(self) -> None:
        """Start listening."""
        await self._served.start()

    async def close(self) -> None:
        """Stop listening."""
        await self._served.close()

    async def _ready(self, _: web.Request) -> web.Response:
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), timeout=READINESS_TIMEOUT_S)
                results[name] = "ok"
            except Exception as error:
                results[name] = f"{type(error).__name__}: {error}"[:300]
        status = 200 if all(v == "ok" for v in results.values()) else 503
        return web.json_response(results, status=status, dumps=json.dumps)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
