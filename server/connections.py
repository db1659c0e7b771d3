"""Connection guards below the ASGI app (uvicorn's httptools protocol): a cap on concurrent
connections per client address, and a deadline for each request to arrive whole, so clients that
open many connections or send half a request (slowloris) cannot exhaust the server."""

from __future__ import annotations

import asyncio
import os

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ServerSettings

__all__ = ["GuardedProtocol", "guarded_protocol"]

_REFUSED = (b'{"error":"overloaded","message":"too many connections from this address","path":null}')
_TIMED_OUT = (b'{"error":"timeout","message":"the request did not arrive whole in time","path":null}')


def _answer(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"connection: close\r\n\r\n" + body)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two guards (limits from `ServerSettings`):

    - `max_connections_per_client` open connections per client IP address; one more is answered
      503 with Retry-After and closed before it is read;
    - `read_timeout_s`: a request must arrive whole (headers and body) within that many seconds
      of its first byte, and a new connection must bring its first request within that time; a
      late one is answered 408 (if no answer has started) and the connection closed, which also
      ends the handler waiting for its body (it sees a disconnect).

    Idle keep-alive connections between requests are uvicorn's `timeout_keep_alive`. `scoreline
    serve` workers read the limits from $SCORELINE_SERVE_CONFIG; `guarded_protocol(settings)`
    makes a class with given limits (one process).
    """

    settings: ServerSettings | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        limits = self._limits()
        counts = self._counts()
        self._host = self.client[0] if self.client else ""
        counts[self._host] = counts.get(self._host, 0) + 1
        if counts[self._host] > limits.max_connections_per_client:
            transport.write(_answer(b"503 Service Unavailable", _REFUSED, b"retry-after: 1\r\n"))
            transport.close()
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        counts = self._counts()
        left = counts.get(self._host, 1) - 1
        if left > 0:
            counts[self._host] = left
        else:
            counts.pop(self._host, None)
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self._limits().read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_answer(b"408 Request Timeout", _TIMED_OUT))
        self.transport.close()

    def _counts(self) -> dict[str, int]:
        # per server (one per worker process): open connections by client address
        counts = getattr(self.server_state, "scoreline_clients", None)
        if counts is None:
            # our own attribute on uvicorn's ServerState (one per server), which does not declare it
            counts = self.server_state.scoreline_clients = {}  # type: ignore[attr-defined]
        return counts

    @classmethod
    def _limits(cls) -> ServerSettings:
        if cls.settings is None:
            from .app import ENV_CONFIG

            config = msgspec.json.decode(os.environ.get(ENV_CONFIG, "{}"))
            cls.settings = msgspec.convert(config.get("settings", {}), ServerSettings)
        return cls.settings


def guarded_protocol(settings: ServerSettings) -> type[GuardedProtocol]:
    """A GuardedProtocol class with `settings`' limits (for a server run in this process)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"settings": settings})
