"""The demo's usage dashboard: usage_router() on a local uvicorn server until Enter."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import uvicorn
from fastapi import FastAPI

from biz2bricks_core import DatabaseConfig
from biz2bricks_devtools.localservices import find_free_port
from biz2bricks_fastapi import install_error_handlers, usage_lifespan, usage_router


def serve_dashboard(database_url: str, org: uuid.UUID, port: int | None) -> None:
    """Serve the dashboard of ``org`` on 127.0.0.1 and print its URL; stop on Enter."""
    app = FastAPI(
        lifespan=usage_lifespan(database=DatabaseConfig(database_url=database_url), producer=False)
    )
    install_error_handlers(app)
    app.include_router(usage_router())
    port = port or find_free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    print(f"\nusage dashboard: http://127.0.0.1:{port}/usage/{org}/dashboard")
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        input("serving it; press Enter to stop ")
    server.should_exit = True
    thread.join(timeout=15)
