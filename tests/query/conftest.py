"""A real HTTP server (uvicorn, in a thread) serving usage_router() on the session database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from biz2bricks_core import DatabaseConfig
from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_fastapi import install_error_handlers, usage_lifespan, usage_router


def usage_app(database_url: str) -> FastAPI:
    """The app a service would build: the lifespan, the error handlers, the usage router."""
    app = FastAPI(
        lifespan=usage_lifespan(
            database=DatabaseConfig(database_url=database_url), producer=False, warm_connections=1
        )
    )
    install_error_handlers(app)
    app.include_router(usage_router())
    return app


@pytest.fixture(scope="session")
def usage_server(database_url: str) -> Iterator[str]:
    """The base URL of a uvicorn server running ``usage_app``; stopped at the session's end."""
    port = find_free_port()
    server = uvicorn.Server(
        uvicorn.Config(usage_app(database_url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="usage-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the usage server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)
