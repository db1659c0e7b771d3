"""The one place that turns errors into HTTP answers: Scoreline error kinds -> status codes and JSON bodies."""

from __future__ import annotations

import logging
import math
import re

from scoreline.errors import InputError, SchemaError, ScorelineError

__all__ = [
    "MalformedBody",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RowError",
    "row_error",
    "status_for",
    "error_body",
    "error_headers",
]

log = logging.getLogger("scoreline.server")
_PATH = re.compile(r"`(\$[^`]*)`")

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


class RowError(ScorelineError):
    """A row the engine could not score (its `error` column); kind follows the engine's message."""

    def __init__(self, message: str, *, kind: str = "input", path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.kind = kind


def row_error(text: str, *, prefix: str = "$", key: str | None = None) -> RowError:
    """The error for one row from the engine's per-row `error` text.

    The engine writes "... not found ..." for an unknown entity (-> not-found, at `<prefix>.<key>`)
    and names a bad input's path in backticks (`$.inputs.state`), which is re-rooted at `prefix`
    (`$.rows[3]` in a batch).
    """
    if "not found" in text:
        return RowError(text, kind="not-found", path=f"{prefix}.{key}" if key else prefix)
    match = _PATH.search(text)
    path = prefix + match.group(1)[1:] if match else prefix
    return RowError(text, kind="input", path=path)


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

