"""Scorer: the service's one way into the engine: resolve a deployment, micro-batch its rows, split results.

Every JSON request (v1 single, v1 batch, v2 tensors) is decoded into a `Request` (a RowBatch of raw
values by the deployment's request schema, which the engine owns) and goes through one MicroBatcher
per deployment; each batch is one `engine.score_rows(model_id, rows, version=<resolved int>)`
call, which runs the deployment's pipeline (the one-row run for a request alone) and logs every
row once with its own request id. The typed Result is split back per request; handlers encode it.
Arrow IPC bodies are already batches and go straight to `engine.score_arrow`. Engine work runs in
the executor, off the event loop, with one exception: a key-only `/v1/score` call answered from
the store's in-memory view, when it is still alone one loop turn after it came (an idle service),
is scored on the loop (tens of microseconds, less than the hand-off to a thread and back; see
MicroBatcher's `inline`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

from scoreline.engine.data.request import RowBatch
from scoreline.errors import NotReadyError, ScorelineError
from scoreline.registry.repository import check_model_ref

from .asgi import encode_json
from .batcher import MicroBatcher
from .metrics import Metrics
from .settings import ServerSettings

__all__ = ["Scorer", "Scored", "Request"]


class Request:
    """One request's rows (a RowBatch) on their way to the micro-batcher. `single`: a `/v1/score`
    call, whose answer body is encoded in the executor; `echo_id`: its client sent a request id."""

    __slots__ = ("rows", "n", "single", "echo_id")

    def __init__(self, rows, *, single: bool = False, echo_id: bool = False) -> None:
        self.rows = rows
        self.n = rows.n
        self.single = single
        self.echo_id = echo_id


class Scored:
    """One request's rows of a scored Result (`offset`, `n`); `body`: a `/v1/score` answer already
    encoded as JSON in the executor thread (None for an error or a batch slice)."""

    __slots__ = ("result", "offset", "n", "batch_rows", "first", "body")

    def __init__(self, result, offset: int, n: int, first: bool, body: bytes | None = None) -> None:
        self.result = result
        self.offset = offset
        self.n = n
        self.batch_rows = result.n
        self.first = first  # the slice that reports its engine call's size to the metrics
        self.body = body

    def row(self, i: int) -> dict:
        """Row `i` of this request as the contract (score and decision None for an error)."""
        return self.result.answer(self.offset + i)

    def error(self, i: int) -> ScorelineError | None:
        """Row `i`'s error, or None when it was scored."""
        return self.result.error(self.offset + i)

    def errors(self) -> int:
        errors = self.result.errors
        if not errors:
            return 0
        return sum(1 for row in errors if self.offset <= row < self.offset + self.n)


class _Entry:
    __slots__ = ("deployment", "batcher", "schema", "labels", "fields", "ok_labels")

    def __init__(self, deployment, batcher: MicroBatcher) -> None:
        self.deployment = deployment
        self.batcher = batcher
        self.schema = deployment.request_schema
        self.labels = (deployment.model_id, str(deployment.version))
        self.ok_labels = (*self.labels, "ok")  # built once, not per request
        self.fields = deployment.fields


class Scorer:
    """Resolves deployments and scores rows for the HTTP handlers; owns the batchers and the executor."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = None  # set by the app once the engine is built (it compiles and warms first)
        self.executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="scoreline-score")
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._resolved: set[tuple[str, int | str | None]] = set()
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{int(time.time()) & 0xFFFFFF:x}-"
        metrics.gauge("scoreline_queue_rows", "Rows waiting for a micro-batch, by model and version.",
                      ("model", "version"), self._queue_gauge)

    def new_request_id(self) -> str:
        """A request id unique within this process's life (pid, start time, counter)."""
        return f"{self._id_prefix}{next(self._ids)}"

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)

    # -- resolution ------------------------------------------------------------------------------

    def require_engine(self):
        engine = self.engine
        if engine is None:
            raise NotReadyError("the engine is still loading the registry; retry shortly")
        return engine

    async def entry(self, model_id: object, version: object, *, path: str = "$") -> _Entry:
        """The deployment (and its batcher) for a model id and optional version or alias."""
        if not (type(model_id) is str and (version is None or type(version) is int)
                and (model_id, version) in self._resolved):  # seen before: checked then
            model_id, version = check_model_ref(model_id, version, path=path)
        engine = self.require_engine()
        if (model_id, version) in self._resolved:
            # Seen before, so compiled: the engine resolves it with dict lookups (and compiles a
            # new alias target before it swaps it in), cheap enough for the event loop.
            deployment = engine.deployment(model_id, version)
        else:
            # First use of this model/version/alias may compile it: never on the event loop.
            loop = asyncio.get_running_loop()
            deployment = await loop.run_in_executor(None, engine.deployment, model_id, version)
            self._resolved.add((model_id, version))
        key = (deployment.model_id, deployment.version)
        entry = self._entries.get(key)
        if entry is None or entry.deployment is not deployment:
            # a new deployment object (first use, or a reload rebuilt it): requests already queued
            # on the old batcher still finish on the old object.
            entry = _Entry(deployment, self._batcher(deployment))
            self._entries[key] = entry
        return entry

    def _batcher(self, deployment) -> MicroBatcher:
        s = self.settings
        # Whether a lone key-only call may be scored on the event loop (see MicroBatcher): only
        # where its answer comes from memory, the store's converted view (asked in the executor
        # on the first batch: it may open the store). Then the one-row run is some tens of
        # microseconds, less than handing the row to a thread and back.
        from_memory = []

        def score(parts):
            if not from_memory:
                from_memory.append(deployment.serves_from_memory())
            return self._score_parts(deployment, parts)

        def inline(part: Request) -> bool:
            return part.single and part.rows.inputs is None and bool(from_memory) and from_memory[0]

        return MicroBatcher(
            score, max_rows=s.max_batch, max_wait=s.max_wait_us / 1e6, max_queue=s.max_queue,
            max_in_flight=s.max_in_flight, executor=self.executor, retry_after=s.retry_after_s, inline=inline)

    # -- scoring ---------------------------------------------------------------------------------

    async def score_rows(self, entry: _Entry, request: Request) -> Scored:
        """Score a request's rows through the deployment's micro-batcher."""
        start = time.monotonic()
        scored = await entry.batcher.submit(request, rows=request.n, timeout=self.settings.request_timeout_s)
        self._record(entry, scored, time.monotonic() - start)
        return scored

    async def score_arrow(self, entry: _Entry, batch, request_ids: list[str] | None):
        """Score a client's RecordBatch as it is (no micro-batching: it is a batch already)."""
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        deployment = entry.deployment
        result = await loop.run_in_executor(
            self.executor,
            lambda: self.engine.score_arrow(deployment.model_id, batch, version=deployment.version,
                                            request_ids=request_ids),
        )
        self.metrics.batch_rows.observe(entry.labels, result.n)
        errors = len(result.errors)
        self.metrics.rows.inc(entry.ok_labels, result.n - errors)
        if errors:
            self.metrics.rows.inc((*entry.labels, "error"), errors)
        self.metrics.score_latency.observe(entry.labels, time.monotonic() - start)
        return result

    def _record(self, entry: _Entry, scored: Scored, seconds: float) -> None:
        m = self.metrics
        if scored.first:  # one observation per engine call: its first request records it
            m.batch_rows.observe(entry.labels, scored.batch_rows)
        errors = scored.errors()
        m.rows.inc(entry.ok_labels, scored.n - errors)
        if errors:
            m.rows.inc((*entry.labels, "error"), errors)
        m.score_latency.observe(entry.labels, seconds)

    def _score_parts(self, deployment, parts: list[Request]) -> list:
        """Runs in the executor: one engine call for all parts, the Result split back per part;
        a `/v1/score` part's answer is encoded here, off the event loop."""
        rows = RowBatch.concat([part.rows for part in parts])
        result = self.engine.score_rows(deployment.model_id, rows, version=deployment.version)
        out, offset = [], 0
        for part in parts:
            body = None
            if part.single and not (result.errors and offset in result.errors):
                answer = result.answer(offset)
                if part.echo_id:
                    answer["request-id"] = rows.request_ids[offset]
                body = encode_json(answer)
            out.append(Scored(result, offset, part.n, offset == 0, body))
            offset += part.n
        return out

    def raise_row_errors(self, scored: Scored, where: str) -> None:
        """Raise the first row error of a request (for answers that cannot carry per-row
        errors), its path re-rooted at `where` (formatted with the row number)."""
        for i in range(scored.n):
            error = scored.error(i)
            if error is not None:
                raise error.under(where.format(row=i))

    def _queue_gauge(self):
        for (model_id, version), entry in sorted(self._entries.items()):
            yield (model_id, str(version)), entry.batcher.queued_rows

