"""Where a scoring call's time goes: per-thread stage clocks filled by the instrumented pipeline
(lookup: the fill from the request or the entity store, transforms, model, decision) and the
router (log), folded into one histogram per model, version and stage when the call ends."""

from __future__ import annotations

import threading
from bisect import bisect_left

__all__ = ["STAGES", "StageHistograms", "clock", "LATENCY_BUCKETS"]

STAGES = ("lookup", "transforms", "model", "decision", "log")
# Finer at the bottom than the HTTP buckets: one-row stages take microseconds.
LATENCY_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                   5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class _Clock(threading.local):
    """One scoring call's stage times on this thread (seconds), reset by `start`."""

    def __init__(self) -> None:
        self.times = [0.0, 0.0, 0.0, 0.0]  # lookup, transforms, model, decision

    def start(self) -> None:
        self.times = [0.0, 0.0, 0.0, 0.0]


clock = _Clock()


class StageHistograms:
    """Histograms of stage seconds, keyed by (model, version, stage); thread-safe."""

    def __init__(self) -> None:
        self.values: dict[tuple, list] = {}  # key -> [bucket counts..., +Inf, sum]
        self._lock = threading.Lock()

    def record(self, model_id: str, version: int, log_seconds: float) -> None:
        """Fold this thread's clock (and the log stage's time) into the histograms."""
        times = clock.times
        if not times[0]:  # the deployment was not instrumented, or the call failed first
            return
        version = str(version)
        with self._lock:
            for stage, seconds in zip(STAGES, (*times, log_seconds)):
                key = (model_id, version, stage)
                slots = self.values.get(key)
                if slots is None:
                    slots = self.values[key] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
                slots[bisect_left(LATENCY_BUCKETS, seconds)] += 1
                slots[-1] += seconds

    def snapshot(self) -> dict[tuple, list]:
        with self._lock:
            return {k: list(v) for k, v in self.values.items()}
