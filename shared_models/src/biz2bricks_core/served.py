"""An aiohttp application served on one host and port: the consumer's health server and the
rollup's trigger server start, report and stop their listener the same way."""

from __future__ import annotations

from aiohttp import web

__all__ = ["ServedApp", "alive"]


async def alive(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "alive"})


class ServedApp:
    """Serves ``app`` on ``host``:``port`` between ``start()`` and ``close()`` (port 0: any)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host, self._port = host, port
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._site is None:
            raise RuntimeError("start() first")
        return int(self._site.port)

    async def start(self) -> None:
        """Start listening (OSError when the address is taken or invalid)."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()
