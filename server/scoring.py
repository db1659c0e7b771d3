"""Scorer: the service's one way into the engine: resolve a deployment, micro-batch its rows, split results.

Single requests (v1 JSON, v2 tensors) go through one MicroBatcher per deployment; each batch is one
`engine.score_batch(model_id, batch, version=<resolved int>, request_ids=...)` call, which scores
with `Deployment.score` and logs every row once with its own request id. A `/v1/score` request
alone in its batch (an idle service) takes the engine's one-row path, `engine.score`, instead, and
a batch of key-only `/v1/score` requests on an integer-keyed store takes `engine.score_keys` (the
one-row path's rules for several keys, one kernel call, no Arrow).
Arrow IPC bodies are already batches and go straight to the engine. Engine work runs in the
executor, off the event loop, with one exception: a key-only `/v1/score` call answered from the
store's in-memory view, when it is still alone one loop turn after it came (an idle service), is
scored on the loop by the one-row path (tens of microseconds, less than the hand-off to a thread
and back; see MicroBatcher's `inline`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from scoreline.errors import InputError, NotReadyError, ScorelineError

from .asgi import encode_json
from .batcher import MicroBatcher
from .errors import row_error
from .metrics import Metrics
from .rows import Rows, RowShape, check_model_ref
from .settings import ServerSettings

__all__ = ["Scorer", "Scored"]


class Scored:
    """One request's slice of a scored batch: the output RecordBatch and its rows as Python values.

    A one-row answer of the engine's one-row path (`Scored.one`) keeps the answer dict instead of
    columns, and `body`: the `/v1/score` answer already encoded as JSON (made in the executor
    thread, so the event loop only sends it); None for batch slices."""

    __slots__ = ("batch", "columns", "offset", "n", "batch_rows", "first", "answer", "body")

    def __init__(self, batch: pa.RecordBatch | None, columns: dict[str, list] | None, offset: int, n: int,
                 batch_rows: int, first: bool | None = None) -> None:
        self.batch = batch
        self.columns = columns
        self.offset = offset
        self.n = n
        self.batch_rows = batch_rows
        # the slice that reports its engine call's size to the metrics (once per call)
        self.first = offset == 0 if first is None else first
        self.answer = None
        self.body = None

    @classmethod
    def one(cls, answer: dict, *, batch_rows: int = 1, first: bool = True, body: bytes | None = None) -> Scored:
        """The answer of the engine's one-row path, as a scored batch of one row (one of
        `batch_rows` scored by the same call); `body`: its `/v1/score` answer, encoded."""
        scored = cls(None, None, 0, 1, batch_rows, first)
        scored.answer = answer
        scored.body = body
        return scored

    def row(self, i: int, fields: tuple[str, ...]) -> dict:
        """Row `i` of this request as a dict of `fields` (the contract)."""
        if self.columns is None:
            return {name: self.answer[name] for name in fields}
        j = self.offset + i
        return {name: self.columns[name][j] for name in fields}

    def error(self, i: int) -> str | None:
        """Row `i`'s error text, or None when it was scored."""
        if self.columns is None:
            return None  # the one-row path raises a row's error instead of answering it
        return self.columns["error"][self.offset + i]

    def arrow(self) -> pa.RecordBatch:
        """This request's rows of the output batch (zero-copy slice)."""
        if self.batch is None:
            if self.columns is None:
                return pa.RecordBatch.from_pydict({**{k: [v] for k, v in self.answer.items()}, "error": [None]})
            return pa.RecordBatch.from_pydict(self.columns)
        return self.batch.slice(self.offset, self.n)


class _Entry:
    __slots__ = ("deployment", "batcher", "shape", "labels", "fields", "ok_labels", "version")

    def __init__(self, deployment, batcher: MicroBatcher, shape: RowShape, version) -> None:
        self.deployment = deployment
        # what the engine is asked for: the resolved version, or None for a model whose
        # requests without a version an experiment routes (the engine picks the variant per row)
        self.version = version
        self.batcher = batcher
        self.shape = shape
        self.labels = (deployment.model_id, str(deployment.version))
        self.ok_labels = (*self.labels, "ok")  # built once, not per request
        self.fields = contract_fields(deployment)


def contract_fields(deployment) -> tuple[str, ...]:
    """The contract fields of a deployment's answers, in order (`error` is ours to report, not one)."""
    return tuple(n for n in deployment.output_schema.names if n != "error")


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
        routed = version is None and getattr(engine, "routes", None) is not None \
            and engine.routes(deployment.model_id)
        key = (deployment.model_id, None if routed else deployment.version)
        entry = self._entries.get(key)
        if entry is None or entry.deployment is not deployment:
            # a new deployment object (first use, or a reload rebuilt it): requests already queued
            # on the old batcher still finish on the old object.
            asked = key[1]
            entry = _Entry(deployment, self._batcher(deployment, asked), RowShape(deployment), asked)
            self._entries[key] = entry
        return entry

    def _batcher(self, deployment, version) -> MicroBatcher:
        s = self.settings
        fields = contract_fields(deployment)
        # Whether a lone key-only call may be scored on the event loop (see MicroBatcher): only
        # where its answer comes from memory, the store's converted view (`can_score_keys`, asked
        # in the executor on the first batch: it may open the store). Then the one-row path is
        # some tens of microseconds, less than handing the row to a thread and back.
        from_memory = []

        def score(parts):
            if not from_memory:
                from_memory.append(bool(getattr(self.engine, "score_keys", None)) and deployment.can_score_keys())
            return self._score_parts(deployment, parts, fields, version)

        def inline(part: Rows) -> bool:
            return part.request is not None and part.inputs is None and bool(from_memory) and from_memory[0]

        return MicroBatcher(
            score, max_rows=s.max_batch, max_wait=s.max_wait_us / 1e6, max_queue=s.max_queue,
            max_in_flight=s.max_in_flight, executor=self.executor, retry_after=s.retry_after_s, inline=inline)

    # -- scoring ---------------------------------------------------------------------------------

    async def score_rows(self, entry: _Entry, rows: Rows) -> Scored:
        """Score a request's rows through the deployment's micro-batcher."""
        start = time.monotonic()
        scored = await entry.batcher.submit(rows, rows=rows.n, timeout=self.settings.request_timeout_s)
        self._record(entry, scored, time.monotonic() - start)
        return scored

    async def score_arrow(self, entry: _Entry, batch: pa.RecordBatch, request_ids: list[str] | None) -> pa.RecordBatch:
        """Score a client's RecordBatch as it is (no micro-batching: it is a batch already)."""
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        deployment = entry.deployment
        out = await loop.run_in_executor(
            self.executor,
            lambda: self.engine.score_batch(deployment.model_id, batch, version=entry.version, request_ids=request_ids),
        )
        self.metrics.batch_rows.observe(entry.labels, out.num_rows)
        errors = out.num_rows - out.column("error").null_count if out.num_rows else 0
        self.metrics.rows.inc((*entry.labels, "ok"), out.num_rows - errors)
        if errors:
            self.metrics.rows.inc((*entry.labels, "error"), errors)
        self.metrics.score_latency.observe(entry.labels, time.monotonic() - start)
        return out

    def _record(self, entry: _Entry, scored: Scored, seconds: float) -> None:
        m = self.metrics
        if scored.first:  # one observation per engine call: its first request records it
            m.batch_rows.observe(entry.labels, scored.batch_rows)
        if scored.columns is None:  # a one-row answer: scored (its error would have been raised)
            m.rows.inc(entry.ok_labels, 1)
            m.score_latency.observe(entry.labels, seconds)
            return
        errors = sum(1 for i in range(scored.n) if scored.error(i) is not None)
        m.rows.inc(entry.ok_labels, scored.n - errors)
        if errors:
            m.rows.inc((*entry.labels, "error"), errors)
        m.score_latency.observe(entry.labels, seconds)

    def _score_parts(self, deployment, parts: list[Rows], fields: tuple[str, ...], version) -> list:
        """Runs in the executor: one engine call for all parts, results split back per part;
        `fields`: the deployment's contract fields (`contract_fields`), for one-row answers;
        `version`: what the engine is asked for (the entry's)."""
        if len(parts) == 1 and parts[0].request is not None:
            # Alone in its batch (an idle service): the engine's one-row path skips building
            # Arrow arrays and is several times faster than a batch of one (same kernels, same
            # values: the engine checks both paths agree when a version loads). It logs the row
            # and raises a row's error with the engine's own field path.
            try:
                answer = self.engine.score(deployment.model_id, parts[0].request, version=version)
            except ScorelineError as exc:
                return [exc]
            return [self._one(fields, parts[0], answer, 1, True)]
        score_keys = getattr(self.engine, "score_keys", None)
        if score_keys is not None and deployment.can_score_keys() \
                and all(part.request is not None and part.inputs is None for part in parts):
            # Key-only one-entity calls (the common case): the engine scores them by the one-row
            # path's rules with one kernel call and no Arrow, about twice as fast per row as
            # building a batch; each result is what the call alone would have answered.
            return self._score_keys(score_keys, deployment, parts, fields, version)
        shape = self._entries_shape(deployment)
        try:
            batch, ids = shape.to_batch(parts)
            out = self.engine.score_batch(deployment.model_id, batch, version=version, request_ids=ids)
        except (ScorelineError, pa.ArrowException) as exc:
            if len(parts) == 1:
                raise exc if isinstance(exc, ScorelineError) else InputError(f"cannot build the batch: {exc}") from None
            # Values were checked per request, so this is rare; isolate the part at fault so it
            # fails alone and its batch-mates are scored.
            results = []
            for part in parts:
                try:
                    results.append(self._score_parts(deployment, [part], fields, version)[0])
                except ScorelineError as one:
                    results.append(one)
            return results
        columns = {name: out.column(i).to_pylist() for i, name in enumerate(out.schema.names)}
        results, offset = [], 0
        for part in parts:
            results.append(Scored(out, columns, offset, part.n, out.num_rows))
            offset += part.n
        return results

    def _score_keys(self, score_keys, deployment, parts: list[Rows], fields: tuple[str, ...], version) -> list:
        keys = [part.keys[0] for part in parts]
        ids = [part.request_ids[0] for part in parts]
        answers = score_keys(deployment.model_id, keys, version=version, request_ids=ids)
        results, first, n = [], True, len(parts)
        one = self._one
        for part, answer in zip(parts, answers):
            if isinstance(answer, ScorelineError):
                results.append(answer)
            else:
                results.append(one(fields, part, answer, n, first))
                first = False
        return results

    @staticmethod
    def _one(fields: tuple[str, ...], part: Rows, answer: dict, batch_rows: int, first: bool) -> Scored:
        """A one-row answer with its `/v1/score` body encoded here, in the executor thread: the
        contract `fields` in order, and the request id when the client sent one."""
        body = {name: answer[name] for name in fields}
        if part.echo_id:
            body["request-id"] = part.request_ids[0]
        return Scored.one(answer, batch_rows=batch_rows, first=first, body=encode_json(body))

    def _entries_shape(self, deployment) -> RowShape:
        entry = self._entries.get((deployment.model_id, deployment.version))
        return entry.shape if entry is not None and entry.deployment is deployment else RowShape(deployment)

    def raise_row_errors(self, scored: Scored, where: str) -> None:
        """Raise the first row error of a request (for answers that cannot carry per-row errors)."""
        for i in range(scored.n):
            text = scored.error(i)
            if text is not None:
                error = row_error(text)
                error.path = where.format(row=i)
                raise error

    def _queue_gauge(self):
        for _, entry in sorted(self._entries.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
            yield entry.labels, entry.batcher.queued_rows

