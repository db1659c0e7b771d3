"""A fault-injecting proxy on loopback for tests: forwards to an upstream and, on command, adds
latency, answers an HTTP status itself, resets the connection or hangs.

Two modes. "http": requests are parsed (head + Content-Length body) and each one is judged on its
own, so faults apply per request even over a kept-alive connection; the upstream's response is
relayed whole. "tcp": bytes are relayed as they come (Redis), with `delay` added before each
client-to-upstream chunk, so a pipelined batch costs one delay and a request per key one each.

    with FaultProxy(upstream_url) as proxy:          # proxy.url is the address to use
        proxy.set(delay=0.05)                         # every request from now on
        proxy.fail_next(2, status=503)                # the next two requests, then as before
        proxy.set(mode="reset") / proxy.set(mode="hang") / proxy.set(status=502)

`proxy.requests` counts requests seen (http mode), `proxy.forwarded` those relayed upstream.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from urllib.parse import urlparse

__all__ = ["FaultProxy"]

_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 429: "Too Many Requests", 400: "Bad Request"}


class FaultProxy:
    """See the module docstring. Faults: `delay` seconds; `mode` "pass", "reset" or "hang";
    `status` an HTTP status to answer instead of relaying (http mode)."""

    def __init__(self, upstream: str, *, kind: str = "http") -> None:
        parsed = urlparse(upstream if "//" in upstream else f"tcp://{upstream}")
        self.upstream = (parsed.hostname, parsed.port)
        self.kind = kind
        self.delay = 0.0
        self.mode = "pass"
        self.status: int | None = None
        self._next: list[dict] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        scheme = "http" if kind == "http" else "redis"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._started = threading.Event()
        self._writers: set = set()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set(self, *, delay: float | None = None, mode: str | None = None, status: int | None = 0) -> None:
        """Change the standing faults (status=None clears an answered status)."""
        with self._lock:
            if delay is not None:
                self.delay = delay
            if mode is not None:
                self.mode = mode
            if status != 0:
                self.status = status

    def fail_next(self, count: int, *, status: int | None = None, mode: str | None = None,
                  delay: float = 0.0) -> None:
        """The next `count` requests get this fault; then the standing faults apply again."""
        with self._lock:
            self._next.extend([{"status": status, "mode": mode or "pass", "delay": delay}] * count)

    def heal(self) -> None:
        """No faults at all."""
        with self._lock:
            self.delay, self.mode, self.status, self._next = 0.0, "pass", None, []

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- inside the proxy's thread -----------------------------------------------------------

    def _fault(self) -> dict:
        with self._lock:
            self.requests += 1
            if self._next:
                return self._next.pop(0)
            return {"status": self.status, "mode": self.mode, "delay": self.delay}

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        handler = self._serve_http if self.kind == "http" else self._serve_tcp
        server = self._loop.run_until_complete(asyncio.start_server(handler, sock=self._sock))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:           # hung handlers: end them before the loop closes
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _serve_tcp(self, reader, writer) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return

        async def pump(src, dst, delayed: bool) -> None:
            try:
                while data := await src.read(65536):
                    if delayed and self.delay:
                        await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self._writers.discard(writer)

    async def _serve_http(self, reader, writer) -> None:
        self._writers.add(writer)
        upstream = None
        try:
            while True:
                request = await _read_message(reader)
                if request is None:
                    break
                fault = self._fault()
                if fault["delay"]:
                    await asyncio.sleep(fault["delay"])
                if fault["mode"] == "reset":
                    # SO_LINGER 0: close with an RST, as a crashed peer or a load balancer does
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if fault["mode"] == "hang":
                    await asyncio.sleep(3600)
                    return
                if fault["status"] is not None:
                    body = b'{"error": "injected by the fault proxy"}'
                    code = fault["status"]
                    writer.write(f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\ncontent-type: "
                                 f"application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                    await writer.drain()
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(request)
                await upstream[1].drain()
                response = await _read_message(upstream[0])
                if response is None:
                    writer.transport.abort()
                    return
                with self._lock:
                    self.forwarded += 1
                writer.write(response)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            if upstream is not None:
                upstream[1].close()
            writer.close()


async def _read_message(reader) -> bytes | None:
    """One HTTP/1.1 message (head and Content-Length body) as raw bytes; None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body
