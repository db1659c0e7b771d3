"""The one place that turns errors into HTTP answers: Scoreline error kinds -> status codes and JSON bodies."""

from __future__ import annotations

import logging
import math

from scoreline.errors import InputError, SchemaError, ScorelineError

__all__ = [
    "MalformedBody",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "status_for",
    "error_body",
    "error_headers",
]

log = logging.getLogger("scoreline.server")

# docs/contracts.md: schema/input -> 422 (400 for undecodable JSON), not-found -> 404,
# not-ready -> 503, overloaded -> 503 + Retry-After, unauthorized -> 401, registration -> 409.
_STATUS_BY_KIND = {
    "schema": 422,
    "input": 422,
    "model-format": 422,
    "not-found": 404,
    "not-ready": 503,
    "overloaded": 503,
    "unauthorized": 401,
    "registration": 409,
    "malformed": 400,
    "too-large": 413,
    "media-type": 415,
    "method": 405,
}


class MalformedBody(SchemaError):
    """The body is not decodable (not JSON, not an Arrow IPC stream, a truncated binary tensor)."""

    kind = "malformed"


class PayloadTooLarge(InputError):
    """A body over the byte limit, or more rows than one request may carry."""

    kind = "too-large"


class UnsupportedMediaType(InputError):
    """A body whose Content-Type the endpoint does not read."""

    kind = "media-type"


def status_for(exc: BaseException) -> int:
    """The HTTP status for an exception: client faults are 4xx, anything unexpected 500."""
    if isinstance(exc, ScorelineError):
        return _STATUS_BY_KIND.get(exc.kind, 400)
    return 500


def error_body(exc: BaseException, *, protocol_v2: bool = False) -> dict:
    """The JSON body: v1 gives `{"error": kind, "message", "path"}`; the v2 protocol `{"error": text}`."""
    if not isinstance(exc, ScorelineError):
        # The traceback goes to the log, never to the client.
        log.exception("internal error", exc_info=exc)
        exc = ScorelineError("internal error; see the server log")
        exc.kind = "internal"
    if protocol_v2:
        where = f" (at {exc.path})" if exc.path else ""
        return {"error": f"{exc.message}{where}"}
    return exc.to_dict()


def error_headers(exc: BaseException) -> dict[str, str]:
    """Extra headers: Retry-After (whole seconds, at least 1) on overload, WWW-Authenticate on 401."""
    kind = getattr(exc, "kind", None)
    if kind == "overloaded":
        return {"retry-after": str(max(1, math.ceil(getattr(exc, "retry_after", 1.0))))}
    if kind == "unauthorized":
        return {"www-authenticate": 'Bearer realm="scoreline"'}
    return {}

