"""Decision logging off the request path: one-row decisions are queued as plain tuples (no Arrow on
the request path) and a background thread turns them into one RecordBatch per interval for
`DecisionLog.append`; a scored batch is logged as a batch at once."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import pyarrow as pa

__all__ = ["LogBuffer", "reason_text"]

_TS = pa.timestamp("us", tz="UTC")


def _schema() -> pa.Schema:
    # The log's own schema: a batch that already matches it is queued without a conversion.
    from scoreline.registry.decision_log import DECISION_SCHEMA

    return DECISION_SCHEMA


def reason_text(reasons: list | None) -> str | None:
    """A row's reason codes (the explain stage's `reasons`) as the log keeps them: comma-separated."""
    return None if reasons is None else ",".join(r["code"] for r in reasons)


class LogBuffer:
    """Feeds a DecisionLog (or nothing, for `log=None`); see the module docstring.

    `interval`: seconds between drains of queued rows; `max_rows` queued rows wake the drain early.
    """

    def __init__(self, log, *, interval: float = 0.05, max_rows: int = 4096) -> None:
        self.owned = isinstance(log, str)
        if self.owned:
            from scoreline.registry.decision_log import DecisionLog

            log = DecisionLog(log)
        self.log = log
        self._rows: collections.deque = collections.deque()
        self._max_rows = max_rows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_lock = threading.Lock()
        self._thread = None
        if log is not None:
            self._thread = threading.Thread(target=self._run, args=(interval,),
                                            name="scoreline-decision-buffer", daemon=True)
            self._thread.start()

    def row(self, request_id, dep, key, score, decision, seconds: float, error, reasons=None) -> None:
        """Queue one decision (a deque append: thread-safe and about 100 ns); `reasons`: the
        reason codes given, comma-separated."""
        if self.log is None:
            return
        self._rows.append((time.time_ns() // 1000,
                           None if request_id is None else str(request_id), dep.model_id, dep.version,
                           None if key is None else str(key), score, decision, seconds * 1e6,
                           error, reasons))
        if len(self._rows) >= self._max_rows:
            self._wake.set()

    def batch(self, dep, out: pa.RecordBatch, request_ids, seconds: float) -> None:
        """Log a scored batch: one row per output row, the batch's wall time as each latency."""
        if self.log is None or out.num_rows == 0:
            return
        n = out.num_rows
        names = out.schema.names
        if request_ids is not None and not isinstance(request_ids, (pa.Array, pa.ChunkedArray)):
            request_ids = pa.array(list(request_ids), pa.string())
        now = np.full(n, time.time_ns() // 1000, dtype=np.int64)
        self.log.append(pa.RecordBatch.from_arrays(
            [
                pa.array(now, _TS),
                request_ids if request_ids is not None else pa.nulls(n, pa.string()),
                out.column("model-id"),
                out.column("model-version"),  # int64 by the output schema: no cast
                out.column(dep.key_name).cast(pa.string()),
                out.column(names[3]),
                out.column(names[4]),
                pa.array(np.full(n, seconds * 1e6)),
                out.column("error"),
                pa.array([reason_text(r) for r in out.column("reasons").to_pylist()], pa.string())
                if "reasons" in names else pa.nulls(n, pa.string()),
            ],
            schema=_schema(),
        ))

    def flush(self) -> None:
        """Hand every queued row to the log and wait until the log has written them."""
        if self.log is None:
            return
        self._drain()
        self.log.flush()

    def close(self) -> None:
        if self.log is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._drain()
        if self.owned:
            self.log.close()
        else:
            self.log.flush()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # the log reports its own failures; keep draining
                continue

    def _drain(self) -> None:
        with self._drain_lock:
            n = len(self._rows)
            if not n:
                return
            rows = [self._rows.popleft() for _ in range(n)]
        ts, rid, model, version, key, score, decision, latency, error, reasons = zip(*rows)
        self.log.append(pa.RecordBatch.from_arrays(
            [
                pa.array(ts, _TS),
                pa.array(rid, pa.string()),
                pa.array(model, pa.string()),
                pa.array(version, pa.int64()),
                pa.array(key, pa.string()),
                pa.array(score, pa.float64()),
                pa.array(decision, pa.string()),
                pa.array(latency, pa.float64()),
                pa.array(error, pa.string()),
                pa.array(reasons, pa.string()),
            ],
            schema=_schema(),
        ))
