"""/healthz, /readyz and /metrics of the worker, served by aiohttp."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from biz2bricks_consumer.metrics import ConsumerMetrics

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_TIMEOUT_S = 3.0


class HealthServer:
    """Liveness, readiness (every check passes within 3 s) and Prometheus metrics."""

    def __init__(
        self, metrics: ConsumerMetrics, checks: dict[str, ReadinessCheck], host: str, port: int
    ) -> None:
        self._metrics = metrics
        self.checks = checks
        self._host, self._port = host, port
        app = web.Application()
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._site is not None, "start() first"
        return int(self._site.port)

    async def start(self) -> None:
        """Start listening."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    async def _alive(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

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
