"""`serve_in_thread(app)`: an ASGI app under uvicorn in a background thread on a free loopback
port, for checks that need a real server for a moment (the demo's registration of its remote
model, the tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(app, *, start_timeout: float = 60.0, http="httptools"):
    """Run `app` (uvicorn, httptools or the protocol class `http`) on 127.0.0.1:<free port>;
    yields the base URL; stops it on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=http, loop="asyncio", log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
