"""Timing loops over a predict callable: per-call latencies and bulk seconds (numpy only).

Imported both by the suite and by peer worker processes that run in other virtual environments,
so it must depend on nothing but numpy and the standard library.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["time_calls", "time_bulk", "calls_for_budget"]


def calls_for_budget(predict, X: np.ndarray, batch: int, budget_s: float, lo: int = 20, hi: int = 5000) -> int:
    """How many calls of `batch` rows fit in `budget_s`, from a short probe (also a warm-up)."""
    probe = 5
    t0 = time.perf_counter()
    for i in range(probe):
        start = (i * batch) % max(1, X.shape[0] - batch + 1)
        predict(X[start:start + batch])
    per_call = (time.perf_counter() - t0) / probe
    return int(min(hi, max(lo, budget_s / max(per_call, 1e-9))))


def time_calls(predict, X: np.ndarray, batch: int, calls: int) -> np.ndarray:
    """Nanoseconds of each of `calls` calls on consecutive slices of `batch` rows of X.

    Slices walk through X (wrapping) so each call sees different rows, as a service would; a
    slice of a C-contiguous matrix stays contiguous, so no engine pays for a copy we made.
    """
    n = X.shape[0]
    span = max(1, n - batch + 1)
    out = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        start = (i * batch) % span
        rows = X[start:start + batch]
        t0 = clock()
        predict(rows)
        out[i] = clock() - t0
    return out


def time_bulk(predict, X: np.ndarray, repeats: int) -> np.ndarray:
    """Seconds of each of `repeats` calls scoring all of X at once."""
    out = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        t0 = time.perf_counter()
        predict(X)
        out[i] = time.perf_counter() - t0
    return out
