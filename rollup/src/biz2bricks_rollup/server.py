"""``biz2bricks-rollup serve``: POST / runs the rollup for Cloud Scheduler and returns JSON.

Callers authenticate with ``Authorization: Bearer <token>``: either the shared secret
(``ROLLUP_AUTH=token``, ``ROLLUP_SHARED_TOKEN``) or a Google-signed OIDC ID token whose audience
is ``ROLLUP_OIDC_AUDIENCE`` (``ROLLUP_AUTH=oidc``, what Cloud Scheduler sends). Anything else: 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Literal

from aiohttp import web
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from biz2bricks_core.config import Settings
from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.errors import ConfigurationError
from biz2bricks_core.served import ServedApp, alive
from biz2bricks_rollup.daily import after_summaries, check_settings
from biz2bricks_rollup.rollup import RollupBusyError, run_rollup

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Cloud Scheduler sends an empty or tiny body


class ServeSettings(Settings):
    """How ``serve`` listens and whom it trusts."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    host: str = Field(default="0.0.0.0", validation_alias="ROLLUP_HOST")
    port: int = Field(default=8080, ge=0, le=65535, validation_alias="PORT")
    auth: Literal["token", "oidc"] = Field(default="token", validation_alias="ROLLUP_AUTH")
    shared_token: SecretStr | None = Field(default=None, validation_alias="ROLLUP_SHARED_TOKEN")
    oidc_audience: str | None = Field(default=None, validation_alias="ROLLUP_OIDC_AUDIENCE")
    oidc_email: str | None = Field(default=None, validation_alias="ROLLUP_OIDC_EMAIL")

    def check(self) -> None:
        """Refuse to start without the secret or audience the chosen mode needs."""
        if self.auth == "token" and not self.shared_token:
            raise ConfigurationError("ROLLUP_SHARED_TOKEN must be set when ROLLUP_AUTH=token")
        if self.auth == "oidc" and not self.oidc_audience:
            raise ConfigurationError("ROLLUP_OIDC_AUDIENCE must be set when ROLLUP_AUTH=oidc")


def _verify_oidc(token: str, audience: str, email: str | None) -> bool:
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_oauth2_token(token, Request(), audience)  # type: ignore[no-untyped-call]
    except ValueError:
        return False
    return email is None or (claims.get("email") == email and claims.get("email_verified"))


class RollupServer:
    """POST / (or /run) triggers a rollup of the due days; GET /healthz answers liveness."""

    def __init__(self, db: DatabaseManager, settings: ServeSettings) -> None:
        settings.check()
        self._db = db
        self._settings = settings
        check_settings()  # a malformed setting stops the server now, not at a trigger
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", alive)
        app.router.add_post("/", self._run)
        app.router.add_post("/run", self._run)
        self._served = ServedApp(app, settings.host, settings.port)

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

    async def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if self._settings.auth == "token":
            secret = self._settings.shared_token
            return secret is not None and hmac.compare_digest(
                token.encode(), secret.get_secret_value().encode()
            )
        return await asyncio.to_thread(
            _verify_oidc, token, self._settings.oidc_audience or "", self._settings.oidc_email
        )

    async def _run(self, request: web.Request) -> web.Response:
        if not await self._authorized(request):
            log.warning("rollup.unauthorized_request")
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            results = await run_rollup(self._db, wait=False)
        except RollupBusyError as error:
            return web.json_response({"error": str(error)}, status=409)
        done = await after_summaries(self._db)
        return web.json_response({"days": [r.as_dict() for r in results], **done.as_dict()})
