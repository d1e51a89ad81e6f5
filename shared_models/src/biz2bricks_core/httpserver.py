"""A minimal asyncio HTTP/1.1 server for a handful of routes (health, metrics, a trigger).

Both deployables need only a few endpoints; this avoids a web framework in their images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["HttpRequest", "HttpResponse", "HttpServer"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class HttpRequest:
    """The parts of a request the handlers use."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    """Status, body and content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """Serves ``handler`` on host:port; one request per connection."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self._handler = handler
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> HttpRequest | HttpResponse:
        request_line = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1").split()
        if len(request_line) < 2:
            return HttpResponse(400, b'{"error":"bad request"}')
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            return HttpResponse(413, b'{"error":"body too large"}')
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        path = request_line[1].split("?", 1)[0]
        return HttpRequest(request_line[0].upper(), path, headers, body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read(reader)
            if isinstance(request, HttpResponse):
                response = request
            else:
                try:
                    response = await self._handler(request)
                except Exception:
                    log.exception("http.handler_failed")
                    response = HttpResponse(500, b'{"error":"internal error"}')
            head = (
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + response.body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
