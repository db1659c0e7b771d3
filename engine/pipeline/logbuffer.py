"""The engine's side of decision logging: one-row decisions go to the DecisionLog as plain tuples
(`DecisionLog.append_row`: no Arrow and no second buffer on the request path; the log's writer
thread batches and commits them), a scored batch as a batch; durable deployments are counted so
the server can hold their answers until the log has committed them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

    `durable_pending`: whether a row of a deployment whose manifest asks for durable logging
    (`log.durable`) may not be committed yet (`on_committed` clears it once it is).
    `artifacts(model_id, version)`: the artifact sha256 of a version other than the batch's own
    deployment (an experiment's batch mixes its variants' rows); None when unknown.
    """

    def __init__(self, log, *, artifacts=None) -> None:
        self._artifacts = artifacts
        self.owned = isinstance(log, str)
        if self.owned:
            from scoreline.registry.decision_log import DecisionLog

            log = DecisionLog(log)
        self.log = log
        self._durable = 0  # durable rows appended (a counter read by on_committed)
        self._durable_done = 0
        self._lock = threading.Lock()

    @property
    def durable_pending(self) -> bool:
        return self._durable != self._durable_done

    def row(self, request_id, dep, key, score, decision, seconds: float, error,
            experiment: str | None = None, role: str | None = None, reasons: str | None = None) -> None:
        """Log one decision (a deque append in the log: thread-safe and about 100 ns); `reasons`:
        the reason codes given, comma-separated."""
        if self.log is None:
            return
        self.log.append_row((time.time_ns() // 1000,
                             None if request_id is None else str(request_id), dep.model_id, dep.version,
                             None if key is None else str(key), score, decision, seconds * 1e6,
                             error, experiment, role, dep.artifact_sha256, reasons))
        if dep.manifest.log.durable:
            with self._lock:
                self._durable += 1

    def batch(self, dep, out: pa.RecordBatch, request_ids, seconds: float,
              experiment: str | None = None, roles=None) -> None:
        """Log a scored batch: one row per output row, the batch's wall time as each latency;
        `roles`: a role per row (or one for all) when the batch is part of an experiment."""
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
                # a remote model's fallback row is logged with what answered and why
                pc.coalesce(out.column("error"), out.column("fallback")) if "fallback" in names
                else out.column("error"),
                pa.nulls(n, pa.string()) if experiment is None else pa.repeat(pa.scalar(experiment), n),
                _roles(roles, n),
                self._artifact_column(dep, out.column("model-version")),
                pa.array([reason_text(r) for r in out.column("reasons").to_pylist()], pa.string())
                if "reasons" in names else pa.nulls(n, pa.string()),
            ],
            schema=_schema(),
        ))
        if dep.manifest.log.durable:
            with self._lock:
                self._durable += 1

    def on_committed(self, callback) -> bool:
        """Call `callback()` (from the log's writer thread) once every decision logged so far is
        committed; False (and no call) when there is no log."""
        if self.log is None:
            return False
        target = self._durable

        def committed() -> None:
            with self._lock:
                self._durable_done = max(self._durable_done, target)
            callback()

        self.log.on_committed(committed)
        return True

    def _artifact_column(self, dep, versions: pa.Array) -> pa.Array:
        """Each row's artifact sha256, by the version that answered it."""
        n = len(versions)
        if versions.null_count == 0 and pc.all(pc.equal(versions, dep.version)).as_py():
            return pa.repeat(pa.scalar(dep.artifact_sha256, pa.string()), n)
        known = {dep.version: dep.artifact_sha256}
        for v in pc.unique(versions).drop_null().to_pylist():
            if v not in known:
                known[v] = self._artifacts(dep.model_id, v) if self._artifacts is not None else None
        return pa.array([known.get(v) for v in versions.to_pylist()], pa.string())

    def flush(self) -> None:
        """Wait until the log has written every decision logged so far."""
        if self.log is not None:
            self.log.flush()

    def close(self) -> None:
        if self.log is None:
            return
        if self.owned:
            self.log.close()
        else:
            self.log.flush()


def _roles(roles, n: int) -> pa.Array:
    if roles is None:
        return pa.nulls(n, pa.string())
    if isinstance(roles, str):
        return pa.repeat(pa.scalar(roles), n)
    return pa.array(roles, pa.string())
