"""A circuit breaker: after enough failures in a row, stop calling a dependency for a while, then
let one probe through; its result closes the breaker or opens it again (engine/models/remote.py)."""

from __future__ import annotations

import threading
import time

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """closed -> (failures in a row) -> open -> (reset seconds) -> half-open: one probe -> closed or open."""

    def __init__(self, failures: int, reset: float, clock=time.monotonic) -> None:
        self.failures = failures
        self.reset = reset
        self._clock = clock
        self._lock = threading.Lock()
        self._failed = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.reset else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only one probe at a time)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset:
                return False
            self._probing = True
            return True

    def record(self, ok: bool) -> None:
        with self._lock:
            probing, self._probing = self._probing, False
            if ok:
                self._failed, self._opened_at = 0, None
                return
            self._failed += 1
            if probing or self._failed >= self.failures:
                self._opened_at = self._clock()
