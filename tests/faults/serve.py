"""Shared pieces of the fault tests (no tests here): `scoreline serve` as a real process on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.support.server import free_port


@contextlib.contextmanager
def serve(registry, *args: str, env: dict | None = None, ready: bool = True, stop=signal.SIGTERM):
    """Run `scoreline serve --registry REGISTRY ARGS...` on a free port; yields (process, base URL)
    once /readyz answers 200 (`ready`) or /healthz does; stops it with `stop` at the end."""
    port = free_port()
    environ = dict(os.environ, **(env or {}))
    environ.setdefault("NUMBA_CACHE_DIR", str(registry.parent / "numba"))
    process = subprocess.Popen(
        [sys.executable, "-m", "scoreline.cli", "serve", "--registry", str(registry), "--port", str(port),
         "--log-level", "warning", *args],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, "/readyz" if ready else "/healthz", process)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(stop)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def wait_for(url: str, path: str, process=None, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stdout.read()}")
        try:
            answer = httpx.get(url + path, timeout=5)
            if answer.status_code == 200:
                return answer
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not answer 200 within {timeout}s")
        time.sleep(0.05)


def until(predicate, timeout: float = 20.0, step: float = 0.1):
    """Poll `predicate()` until it returns a true value (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None
