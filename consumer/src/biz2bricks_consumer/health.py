"""A small HTTP server for /healthz, /readyz and /metrics (no framework needed for three routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from biz2bricks_consumer.metrics import ConsumerMetrics

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


class HealthServer:
    """Serves liveness, readiness (every check passes within 3 s) and Prometheus metrics."""

    def __init__(
        self, metrics: ConsumerMetrics, checks: dict[str, ReadinessCheck], host: str, port: int
    ) -> None:
        self._metrics = metrics
        self._checks = checks
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("consumer.health_listening", extra={"port": self.port})

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _readiness(self) -> tuple[int, bytes]:
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), timeout=3)
                results[name] = "ok"
            except Exception as error:
                results[name] = f"{type(error).__name__}: {error}"[:300]
        status = 200 if all(v == "ok" for v in results.values()) else 503
        return status, json.dumps(results).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            content_type = "application/json"
            if path == "/healthz":
                status, body = 200, b'{"status":"alive"}'
            elif path == "/readyz":
                status, body = await self._readiness()
            elif path == "/metrics":
                status, body = 200, generate_latest(self._metrics.registry)
                content_type = CONTENT_TYPE_LATEST
            else:
                status, body = 404, b'{"error":"not found"}'
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
