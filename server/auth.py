"""API keys as pure ASGI middleware: admin endpoints need an admin key; the model API may need an API key.

A key travels as `Authorization: Bearer <key>` or `X-API-Key: <key>` and is compared in constant
time. Admin endpoints (`/admin/...`) are refused outright when no admin key is configured. When API
keys are configured, every `/v1/...` and `/v2/models/...` endpoint needs one; health, readiness,
metrics, `/v2`, `/v2/health/...` and the OpenAPI document stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac

from scoreline.errors import UnauthorizedError

from .asgi import send_error

__all__ = ["ApiKeyMiddleware", "has_key"]


class ApiKeyMiddleware:
    """Refuses requests without the right key with 401 before they reach a route."""

    def __init__(self, app, *, api_keys: tuple[str, ...] = (), admin_keys: tuple[str, ...] = ()) -> None:
        self.app = app
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.admin_keys = tuple(k.encode() for k in admin_keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/admin"):
                if not self.admin_keys:
                    await send_error(send, UnauthorizedError("admin endpoints are disabled: start the server with --admin-key"))
                    return
                if not has_key(scope, self.admin_keys):
                    await send_error(send, UnauthorizedError("missing or wrong admin key"))
                    return
            elif self.api_keys and (path.startswith("/v1/") or path.startswith("/v2/models")):
                if not has_key(scope, self.api_keys):
                    await send_error(send, UnauthorizedError("missing or wrong API key"),
                                     protocol_v2=path.startswith("/v2/"))
                    return
        await self.app(scope, receive, send)


def has_key(scope, keys: tuple[bytes, ...]) -> bool:
    """Whether the request carries one of `keys` (Bearer or X-API-Key), compared in constant time."""
    given = None
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
            break
        if name == b"x-api-key":
            given = value.strip()
            break
    if not given:
        return False
    # compare against every key so timing does not reveal which one nearly matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched
