"""The error hierarchy every layer raises: one root class, one subclass per kind of failure."""

from __future__ import annotations

import copy

__all__ = [
    "ScorelineError",
    "ModelFormatError",
    "SchemaError",
    "InputError",
    "NotFoundError",
    "NotReadyError",
    "RegistrationError",
    "OverloadedError",
    "UnauthorizedError",
]


class ScorelineError(Exception):
    """Root of every error Scoreline raises on purpose.

    ``path`` names where the problem is, as a JSON-path-like string (``$.inputs.date-of-birth``,
    ``tree 17``, ``column 'age'``) or ``None`` when the whole object is at fault.
    """

    kind = "error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def under(self, prefix: str) -> ScorelineError:
        """A copy of this error with its JSON path re-rooted at `prefix`: `$.inputs.state` under
        `$.rows[3]` is `$.rows[3].inputs.state` (a path that is not a JSON path is kept)."""
        other = copy.copy(self)
        path = self.path
        if path is None or path == "$":
            other.path = prefix
        elif path.startswith("$"):
            other.path = prefix + path[1:]
        return other

    def to_dict(self) -> dict:
        """The JSON body the server and CLI show: ``{"error": kind, "message": ..., "path": ...}``."""
        body = {"error": self.kind, "message": self.message}
        if self.path is not None:
            body["path"] = self.path
        return body


class ModelFormatError(ScorelineError):
    """A model artifact (LightGBM text, linear coefficients) is ill-formed, truncated or unsupported."""

    kind = "model-format"


class SchemaError(ScorelineError):
    """A manifest or request does not match its schema (wrong type, unknown or missing field)."""

    kind = "schema"


class InputError(ScorelineError):
    """Input data cannot be scored: wrong feature count, missing or non-numeric column, bad value."""

    kind = "input"


class NotFoundError(ScorelineError):
    """An unknown model id, version, alias or entity key."""

    kind = "not-found"


class NotReadyError(ScorelineError):
    """A deployment exists but is not compiled and warmed yet, or failed to load."""

    kind = "not-ready"


class RegistrationError(ScorelineError):
    """A model version was refused at registration (it failed end-to-end validation)."""

    kind = "registration"


class OverloadedError(ScorelineError):
    """The service is over capacity (queue full or deadline passed); retry later."""

    kind = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.retry_after = retry_after


class UnauthorizedError(ScorelineError):
    """A missing or wrong API key."""

    kind = "unauthorized"
