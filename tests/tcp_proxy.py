"""A TCP proxy a test can cut and restore, to make the database unreachable for real."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.engine import URL, make_url


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL (TCP or unix socket) until cut."""

    def __init__(self, upstream_url: str) -> None:
        url = make_url(upstream_url)
        self._url = url
        socket_dir = url.query.get("host")
        self._unix = f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None
        self._tcp = (url.host or "127.0.0.1", url.port or 5432)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> URL:
        """The database URL through the proxy."""
        return self._url.set(host="127.0.0.1", port=self.port).difference_update_query(["host"])

    async def start(self) -> None:
        """Accept connections (on the same port as before, after a cut)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Refuse new connections and break every open one."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._tcp)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, RuntimeError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
