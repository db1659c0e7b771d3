"""Bulk scoring: stream RecordBatches from files (or any iterator) through a deployment or a bare
model, with reading, scoring and writing overlapped on threads and memory bounded by batch size.

Every row read comes out exactly once: in the output when it was scored, in the rejects (its kept
columns, where it came from, and the reason) when its ``error`` is set.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.engine.bulk import sources as _sources
from scoreline.errors import InputError, NotFoundError
from scoreline.registry.manifest import decode_manifest, encode_manifest

__all__ = [
    "score_file",
    "score_batches",
    "score_batch",
    "plan_job",
    "Job",
    "Sink",
    "BulkResult",
    "Progress",
    "as_scorer",
    "ModelScorer",
    "DeploymentScorer",
    "load_model_file",
    "rejects_path_for",
]

DEFAULT_BATCH_SIZE = 65_536
_REJECT_FIELDS = (pa.field("source", pa.string()), pa.field("row", pa.int64()), pa.field("reason", pa.string()))
_POLL = 0.1  # seconds a blocked wait sleeps between looks, so Ctrl-C lands promptly


@dataclass(frozen=True)
class BulkResult:
    """What a bulk job did: row counts (``rows_read == rows_scored + rows_rejected``) and where."""

    output: Path
    rejects: Path
    files: int
    rows_read: int
    rows_scored: int
    rows_rejected: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for a person: counts, time, speed and the files written."""
        rejected = f"{self.rows_rejected:,} rejected" + (f" (in {self.rejects})" if self.rows_rejected else "")
        return (
            f"{self.rows_read:,} rows read from {self.files} file(s), {self.rows_scored:,} scored, "
            f"{rejected}, in {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s) -> {self.output}"
        )


class Progress:
    """Receives a job's progress (the CLI's rich bar implements it); called from one thread."""

    def start(self, total_rows: int | None) -> None:
        """Called once before the first row; ``None`` when the files do not say their size."""

    def advance(self, rows: int) -> None:
        """``rows`` more rows were read, scored and written."""

    def stop(self) -> None:
        """Called once at the end, also after a failure or Ctrl-C."""


def score_batches(
    batches: Iterable[pa.RecordBatch],
    model,
    *,
    keep: Sequence[str] = (),
    raw_score: bool = False,
    threads: int = 1,
    registry: str | os.PathLike | None = None,
    version: int | str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Score a stream of RecordBatches, yielding one output batch per input batch, in order.

    Parameters
    ----------
    batches:
        Any iterable of ``pyarrow.RecordBatch`` (a ``Table`` is taken batch by batch). It is
        read on a background thread, a few batches ahead of the scoring.
    model:
        A ``Deployment``, a loaded model (``load_lightgbm``/``load_linear``), a model file path,
        or a model id with ``registry`` (and optional ``version``: a number or an alias).
    keep:
        Input columns copied to the output ahead of the model's columns (say, an id).
    raw_score:
        Bare models only: raw margins instead of transformed scores.
    threads:
        Batches scored at once, one thread each (the kernels release the GIL).

    Yields
    ------
    pyarrow.RecordBatch
        The ``keep`` columns, the model's output columns (the deployment's contract, or ``score``
        / ``score_<class>`` for a bare model) and ``error`` (utf8, null for a scored row; a row
        with an error has null outputs). No row is dropped.

    Raises
    ------
    InputError
        A batch that cannot be scored at all (a column the model or ``keep`` needs is absent, a
        feature column is not numeric), raised when that batch is reached.
    """
    scorer = as_scorer(model, raw_score=raw_score, registry=registry, version=version)
    keep = tuple(keep)
    threads = max(1, int(threads))

    def tables() -> Iterator[pa.RecordBatch]:
        for item in batches:
            yield from item.to_batches() if isinstance(item, pa.Table) else (item,)

    checked: list[pa.Schema] = []

    def score(batch: pa.RecordBatch) -> pa.RecordBatch:
        # Checked once per schema; a stream normally has one.
        if not checked or batch.schema != checked[-1]:
            _check_schema(scorer, batch.schema, keep, (), "batch")
            checked.append(batch.schema)
        return _score_one(scorer, batch, keep, ())

    ahead = _sources.read_ahead([tables], parallel=1, depth=2 * threads)
    try:
        yield from _ordered_map(score, ahead, threads)
    finally:
        ahead.close()


def score_file(
    model,
    input,
    output: str | os.PathLike,
    *,
    registry: str | os.PathLike | None = None,
    version: int | str | None = None,
    keep: Sequence[str] = (),
    rejects: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    format: str | None = None,
    raw_score: bool = False,
    progress: Progress | None = None,
) -> BulkResult:
    """Score Parquet / Arrow IPC / CSV file(s) into one Parquet or Arrow IPC file.

    Parameters
    ----------
    model:
        As for :func:`score_batches`.
    input:
        A file, a directory (its Parquet, Arrow and CSV files; hidden and ``_`` names skipped), a
        glob, or a list of these. Several files are read and scored at once; rows of one file
        keep their order, files may interleave.
    output:
        The output file; its format comes from ``format`` or its extension (.parquet, .arrow).
        It appears only when complete (written under a hidden temporary name beside it, then
        renamed), and holds the scored rows: ``keep`` columns then the model's columns.
    keep:
        Input columns copied to the output and to the rejects (say, the entity id).
    rejects:
        Where rows with an error go (default ``<output stem>.rejects<suffix>``). Always written,
        empty when every row scored, with columns ``keep``, ``source`` (the file), ``row`` (its
        0-based row in that file) and ``reason``.
    batch_size:
        Rows per batch: memory in use is a few batches per thread, whatever the file size.
    threads:
        Scoring threads (default: the CPUs this process may use).
    format:
        ``"parquet"`` or ``"arrow"`` (IPC file), overriding the extension.
    raw_score:
        Bare models only: raw margins instead of transformed scores.
    progress:
        A :class:`Progress` to report to (the CLI passes its progress bar).

    Returns
    -------
    BulkResult
        Counts, time and the paths written.

    Raises
    ------
    InputError
        Before anything is written, when a file cannot be used at all: a column the model or
        ``keep`` needs is absent, a feature column is not numeric, files disagree on a kept
        column's type. Also (removing the partial files) when a later batch turns out unusable.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}", path="batch_size")
    job = plan_job(model, input, output, registry=registry, version=version, keep=keep, rejects=rejects,
                   format=format, raw_score=raw_score)
    threads = max(1, int(threads or len(os.sched_getaffinity(0))))
    srcs = job.sources

    def score(item: tuple[int, int, pa.RecordBatch]):
        index, offset, batch = item
        if isinstance(batch, _sources.Malformed):
            return job.malformed(batch, srcs[index].path)
        text = tuple(srcs[index].column_types or ())
        return job.split(_score_one(job.scorer, batch, job.keep, text), srcs[index].path, offset)

    items = _sources.read_sources(
        srcs, batch_size=batch_size, columns=job.columns_for, parallel=min(len(srcs), threads), depth=2 * threads
    )
    try:
        with job.sink(progress) as sink:
            for good, bad in _ordered_map(score, items, threads):
                sink.write(good, bad)
            sink.commit()
    finally:
        items.close()
    return sink.result(time.perf_counter() - started)


@dataclass(frozen=True)
class Job:
    """A checked bulk job: what to read, how to score it, and where and how to write the results.
    Built by :func:`plan_job`; the local pipeline and the Ray/Spark drivers all write through it."""

    scorer: object
    keep: tuple[str, ...]
    sources: list
    output: Path
    rejects: Path
    format: str
    rejects_format: str
    output_schema: pa.Schema
    rejects_schema: pa.Schema
    wanted: frozenset | None

    def columns_for(self, schema: pa.Schema) -> list[str] | None:
        """The columns of a file with ``schema`` that scoring needs (None: all)."""
        return None if self.wanted is None else [name for name in schema.names if name in self.wanted]

    def total_rows(self) -> int | None:
        sizes = [s.num_rows for s in self.sources]
        return None if None in sizes else sum(sizes)

    def split(self, scored: pa.RecordBatch, source, first_row: int | None):
        """(rows for the output, rows for the rejects or None) of one scored batch.

        ``source``: the file (a string, or a string array naming each row's file); ``first_row``:
        the batch's first row number in that file, or None where it is not known (distributed).
        """
        return _split(scored, source, first_row, self.output_schema, self.rejects_schema)

    def malformed(self, lines, source: str):
        """(no output rows, one reject per malformed CSV line: kept columns null, row unknown)."""
        n = lines.num_rows
        arrays = [pa.nulls(n, f.type) for f in list(self.rejects_schema)[: -len(_REJECT_FIELDS)]]
        arrays += [pa.array([source] * n, pa.string()), pa.nulls(n, pa.int64()), pa.array(lines.reasons, pa.string())]
        empty = pa.RecordBatch.from_pylist([], schema=self.output_schema)
        return empty, pa.RecordBatch.from_arrays(arrays, schema=self.rejects_schema)

    def sink(self, progress: Progress | None = None) -> "Sink":
        return Sink(self, progress)


class Sink:
    """The output and rejects writers of a job, with its counts. Use as a context manager and call
    ``commit()`` at the end; leaving the block without it (an error, Ctrl-C) removes both files."""

    def __init__(self, job: Job, progress: Progress | None) -> None:
        self.job = job
        self.progress = progress
        self.rows_read = self.rows_scored = self.rows_rejected = 0
        self._out = _sources.AtomicWriter(job.output, job.output_schema, job.format)
        self._rej = _sources.AtomicWriter(job.rejects, job.rejects_schema, job.rejects_format)

    def __enter__(self) -> "Sink":
        if self.progress is not None:
            self.progress.start(self.job.total_rows())
        return self

    def write(self, good: pa.RecordBatch, bad: pa.RecordBatch | None) -> None:
        if good.num_rows:
            self._out.write(good)
        n = good.num_rows
        if bad is not None and bad.num_rows:
            self._rej.write(bad)
            self.rows_rejected += bad.num_rows
            n += bad.num_rows
        self.rows_scored += good.num_rows
        self.rows_read += n
        if self.progress is not None:
            self.progress.advance(n)

    def commit(self) -> None:
        # Rejects first: a finished output never points at rejects that are not there yet.
        self._rej.commit()
        self._out.commit()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._out.__exit__(exc_type, exc, tb)
        self._rej.__exit__(exc_type, exc, tb)
        if self.progress is not None:
            self.progress.stop()

    def result(self, seconds: float) -> BulkResult:
        job = self.job
        return BulkResult(job.output, job.rejects, len(job.sources), self.rows_read, self.rows_scored,
                          self.rows_rejected, seconds)


def plan_job(
    model,
    input,
    output: str | os.PathLike,
    *,
    registry=None,
    version: int | str | None = None,
    keep: Sequence[str] = (),
    rejects: str | os.PathLike | None = None,
    format: str | None = None,
    raw_score: bool = False,
) -> Job:
    """Resolve the model and the input files and check every file's schema; writes nothing.
    Parameters as for :func:`score_file`; raises ``InputError`` for an unusable file."""
    scorer = as_scorer(model, raw_score=raw_score, registry=registry, version=version)
    keep = tuple(keep)
    output = Path(output)
    fmt = _sources.output_format(output, format)
    rejects = Path(rejects) if rejects is not None else rejects_path_for(output)
    if rejects.resolve() == output.resolve():
        raise InputError("the rejects file must differ from the output", path="rejects")
    rejects_fmt = _sources.output_format(rejects) if _has_format_suffix(rejects) else fmt
    srcs = _sources.open_sources(input, column_types=scorer.csv_types())
    keep_schema = _check_sources(scorer, srcs, keep)
    needed = scorer.columns_to_read()
    return Job(
        scorer=scorer,
        keep=keep,
        sources=srcs,
        output=output,
        rejects=rejects,
        format=fmt,
        rejects_format=rejects_fmt,
        output_schema=pa.schema(list(keep_schema) + [f for f in scorer.output_schema if f.name not in keep]),
        rejects_schema=pa.schema(list(keep_schema) + list(_REJECT_FIELDS)),
        wanted=None if needed is None else frozenset(needed) | frozenset(keep),
    )


def rejects_path_for(output: str | os.PathLike) -> Path:
    """The default rejects file beside ``output``: ``scores.parquet`` -> ``scores.rejects.parquet``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects{output.suffix or '.parquet'}")


def _has_format_suffix(path: Path) -> bool:
    try:
        _sources.output_format(path)
        return True
    except InputError:
        return False


# --- scoring threads ---------------------------------------------------------------------------


def _ordered_map(fn, items: Iterator, threads: int) -> Iterator:
    """``fn`` over ``items`` on ``threads`` daemon threads, results in input order.

    At most ``2 * threads`` items are in flight, so memory is bounded whatever the input's length,
    and a slow consumer (the writer) holds the readers back. Daemon threads, not a
    ThreadPoolExecutor: on Ctrl-C the process exits without waiting for a batch in a kernel.
    """
    tasks: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        while (job := tasks.get()) is not None:
            future, item = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(item))
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer by result()
                future.set_exception(exc)

    workers = [threading.Thread(target=work, name=f"scoreline-score-{i}", daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    window: deque[Future] = deque()
    try:
        for item in items:
            future: Future = Future()
            tasks.put((future, item))
            window.append(future)
            if len(window) >= 2 * threads:
                yield _result(window.popleft())
        while window:
            yield _result(window.popleft())
    finally:
        for future in window:
            future.cancel()
        for _ in workers:
            tasks.put(None)


def _result(future: Future):
    while True:
        try:
            return future.result(timeout=_POLL)
        except TimeoutError:
            continue


def score_batch(scorer, batch: pa.RecordBatch, keep: Sequence[str] = (), text: Sequence[str] = ()) -> pa.RecordBatch:
    """One batch, on the calling thread: ``keep`` columns + the scorer's outputs + ``error``.

    ``scorer`` comes from :func:`as_scorer`; ``text`` names columns read as text (CSV) that hold
    numbers: a value that is not one rejects its row. What Ray and Spark workers call.
    """
    return _score_one(scorer, batch, tuple(keep), tuple(text))


def _score_one(scorer, batch: pa.RecordBatch, keep: tuple[str, ...], text: tuple[str, ...]) -> pa.RecordBatch:
    kept = [batch.column(name) for name in keep]
    kept_fields = [batch.schema.field(name) for name in keep]
    parse_errors = None
    if text:
        batch, parse_errors = scorer.parse_text(batch, text)
    out = scorer.score(batch)
    error = out.column("error")
    if parse_errors is not None:
        error = pc.coalesce(parse_errors, error)
    arrays, fields = kept, kept_fields
    for i, field in enumerate(out.schema):
        if field.name not in keep and field.name != "error":
            arrays.append(out.column(i))
            fields.append(field)
    arrays.append(error)
    fields.append(pa.field("error", pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _split(scored: pa.RecordBatch, source, first_row: int | None, out_schema: pa.Schema, rej_schema: pa.Schema):
    error = scored.column("error")
    if error.null_count == scored.num_rows:
        return scored.select(out_schema.names), None
    ok = pc.is_null(error)
    bad = pc.invert(ok)
    failed = scored.filter(bad)
    n = failed.num_rows
    if first_row is None:
        rows = pa.nulls(n, pa.int64())
    else:
        rows = pc.filter(pa.array(range(first_row, first_row + scored.num_rows), pa.int64()), bad)
    where = pa.array([source] * n, pa.string()) if isinstance(source, str) else pc.filter(source, bad)
    arrays = [failed.column(f.name) for f in list(rej_schema)[: len(rej_schema) - len(_REJECT_FIELDS)]]
    arrays += [where, rows, failed.column("error")]
    return scored.filter(ok).select(out_schema.names), pa.RecordBatch.from_arrays(arrays, schema=rej_schema)


# --- checks before anything is written ---------------------------------------------------------


def _check_schema(scorer, schema: pa.Schema, keep: tuple[str, ...], text: tuple[str, ...], where: str) -> None:
    problems = [f"column {name!r} (kept) is missing" for name in keep if name not in schema.names]
    # The entity key may be kept (the deployment echoes it anyway); any other clash would hide
    # one of the two columns.
    outputs = set(scorer.output_schema.names) | {"error"}
    problems += [
        f"kept column {name!r} has the name of one of the model's outputs"
        for name in keep
        if name in outputs and name != getattr(scorer, "key_name", None)
    ]
    problems += scorer.problems(schema, text)
    if problems:
        raise InputError(f"{where} cannot be scored: " + "; ".join(problems), path=where)


def _check_sources(scorer, srcs, keep: tuple[str, ...]) -> pa.Schema:
    """Check every file before any output exists; returns the kept columns' common schema."""
    messages = []
    for src in srcs:
        try:
            _check_schema(scorer, src.schema, keep, tuple(src.column_types or ()), src.path)
        except InputError as exc:
            messages.append(exc.message)
    if messages:
        raise InputError("\n".join(messages), path=srcs[0].path if len(srcs) == 1 else "input")
    fields = []
    for name in keep:
        types = {src.schema.field(name).type for src in srcs}
        fields.append(pa.field(name, types.pop() if len(types) == 1 else _common_type(name, types)))
    return pa.schema(fields)


def _common_type(name: str, types: set) -> pa.DataType:
    try:
        schemas = [pa.schema([pa.field(name, t)]) for t in types]
        return pa.unify_schemas(schemas, promote_options="permissive").field(name).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        listed = ", ".join(sorted(map(str, types)))
        raise InputError(f"column {name!r} has different types across files: {listed}", path=f"column {name!r}") from None


# --- what scores a batch: a bare model or a deployment -----------------------------------------
# Both are plain picklable objects: they are what travels to Ray and Spark workers.


def as_scorer(model, *, raw_score: bool = False, registry=None, version: int | str | None = None):
    """The scorer for ``model``: a ``ModelScorer`` or ``DeploymentScorer`` (returned as is), a
    Deployment, a loaded model, a model file, or a model id (``id`` or ``id@version``) in
    ``registry``."""
    if isinstance(model, (ModelScorer, DeploymentScorer)):
        return model
    if hasattr(model, "predict_matrix"):
        return ModelScorer(model, raw_score=raw_score)
    if hasattr(model, "output_schema") and hasattr(model, "score"):
        return DeploymentScorer(_no_raw(model, raw_score))
    if isinstance(model, (str, os.PathLike)):
        if os.path.isfile(model):
            return ModelScorer(load_model_file(model), raw_score=raw_score)
        if registry is None:
            raise NotFoundError(
                f"{os.fspath(model)!r} is not a model file; to score a registered model, give the registry",
                path="model",
            )
        model_id, _, at = os.fspath(model).partition("@")
        return DeploymentScorer(_no_raw(_deployment(registry, model_id, version if version is not None else (at or None)), raw_score))
    raise InputError(
        f"expected a deployment, a model, a model file or a model id, got {type(model).__name__}", path="model"
    )


def _deployment(registry, model_id: str, version: int | str | None):
    """The version's Deployment, straight from the registry (no router: bulk jobs do not log)."""
    from scoreline.engine.pipeline.deployment import Deployment
    from scoreline.registry.repository import Repository

    repo = Repository(registry)
    number = repo.resolve(model_id, version)
    return Deployment(repo.load_manifest(model_id, number), repo.version_dir(model_id, number), version=number)


def load_model_file(path: str | os.PathLike):
    """A LightGBM text model (it starts with ``tree``) or else a linear model file."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip().startswith(b"tree"):
        from scoreline.engine.models.model import load_lightgbm

        return load_lightgbm(os.fspath(path))
    from scoreline.engine.models.linear import load_linear

    return load_linear(os.fspath(path))


def _no_raw(deployment, raw_score: bool):
    if raw_score:
        raise InputError("raw scores are for bare model files: a deployment answers with its contract", path="raw_score")
    return deployment


_NUMERIC_KINDS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)


def _is_numeric(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(test(kind) for test in _NUMERIC_KINDS)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


class ModelScorer:
    """A bare model: feature columns by name in, ``score`` (or ``score_<class>`` per class) out.

    Without a pipeline there are no per-row checks: a row can only be rejected when a value cannot
    be converted to a number, which happens for CSV input (Parquet and Arrow columns are typed,
    and a non-numeric one stops the job before it starts). Nulls are missing values (NaN), as in
    LightGBM; an unseen category is missing too.
    """

    def __init__(self, model, *, raw_score: bool = False) -> None:
        self.model = model
        self.raw_score = raw_score
        k = model.num_class
        names = ["score"] if k == 1 else [f"score_{i}" for i in range(k)]
        self.output_schema = pa.schema([pa.field(name, pa.float64()) for name in names])
        self._numeric = {
            name: pa.float64() for j, name in enumerate(model.feature_names) if j not in model.categories
        }

    def columns_to_read(self) -> list[str]:
        return list(self.model.feature_names)

    def csv_types(self) -> dict[str, pa.DataType]:
        # Numeric features are read as text and parsed here, so one bad value rejects its row
        # instead of failing Arrow's whole CSV block; string categories stay strings ("01").
        types = {name: pa.string() for name in self._numeric}
        for j, cats in self.model.categories.items():
            if cats and all(isinstance(c, str) for c in cats):
                types[self.model.feature_names[j]] = pa.string()
        return types

    def problems(self, schema: pa.Schema, text: tuple[str, ...]) -> list[str]:
        found = []
        for j, name in enumerate(self.model.feature_names):
            if name not in schema.names:
                found.append(f"column {name!r} is missing")
                continue
            kind = schema.field(name).type
            categorical = j in self.model.categories
            if _is_numeric(kind) or (categorical and _is_text(kind)) or (name in text and _is_text(kind)):
                continue
            found.append(f"column {name!r} is {kind}, expected numeric")
        return found

    def parse_text(self, batch: pa.RecordBatch, text: tuple[str, ...]):
        return _parse_numbers(batch, {n: t for n, t in self._numeric.items() if n in text})

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        from scoreline.engine.data.inputs import to_matrix

        matrix = to_matrix(batch, self.model.feature_names, self.model.categories)
        # One thread per batch: bulk jobs get their parallelism from scoring batches at once.
        y = self.model.predict_matrix(matrix, raw_score=self.raw_score, num_threads=1)
        columns = [y] if y.ndim == 1 else [y[:, i] for i in range(y.shape[1])]
        arrays = [pa.array(c, pa.float64()) for c in columns] + [pa.nulls(batch.num_rows, pa.string())]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema.append(pa.field("error", pa.string())))


class DeploymentScorer:
    """A deployment (transforms + model + decision): its contract columns out, per-row errors as the
    pipeline reports them (unknown entity, a bad value, a non-finite score)."""

    def __init__(self, deployment) -> None:
        self.deployment = deployment
        self.key_name = deployment.key_name
        self.output_schema = pa.schema([f for f in deployment.output_schema if f.name != "error"])
        manifest = deployment.manifest
        self._numeric = {
            i.name: (pa.int64() if i.type == "int" else pa.float64())
            for i in manifest.inputs
            if i.type in ("int", "float")
        }
        self._strings = [i.name for i in manifest.inputs if i.type == "string"]
        if manifest.entity.key_type == "string":
            self._strings.append(deployment.key_name)

    def columns_to_read(self) -> list[str]:
        return [self.deployment.key_name, *self.deployment.input_names]

    # -- pickling: what travels to a worker is the manifest and the artifact's bytes; the worker
    # rebuilds (compiles and warms) the deployment once per process and reuses it.
    def __getstate__(self) -> dict:
        dep = self.deployment
        manifest = dep.manifest
        store = manifest.entity.store
        if store is not None and hasattr(store, "path") and not os.path.isabs(store.path):
            # Relative store paths start at the registry root, which the worker does not have.
            absolute = str((dep.version_dir.parent.parent / store.path).resolve())
            entity = msgspec.structs.replace(manifest.entity, store=msgspec.structs.replace(store, path=absolute))
            manifest = msgspec.structs.replace(manifest, entity=entity)
        from scoreline.engine.pipeline.golden import GOLDEN_FILE
        from scoreline.registry.provenance import PROVENANCE_FILE

        artifact = (dep.version_dir / manifest.model.artifact).read_bytes()
        body = encode_manifest(manifest)
        # the golden rows and provenance travel too: each worker re-checks them (pipeline/golden.py)
        checks = {name: (dep.version_dir / name).read_bytes() for name in (GOLDEN_FILE, PROVENANCE_FILE)
                  if (dep.version_dir / name).is_file()}
        token = hashlib.sha256(body + artifact + str(dep.version).encode() + b"".join(checks.values())).hexdigest()[:24]
        return {"token": token, "manifest": body, "artifact": artifact, "version": dep.version, "checks": checks}

    def __setstate__(self, state: dict) -> None:
        with _REBUILT_LOCK:
            deployment = _REBUILT.get(state["token"])
            if deployment is None:
                deployment = _rebuild(state)
                _REBUILT[state["token"]] = deployment
        self.__init__(deployment)

    def csv_types(self) -> dict[str, pa.DataType]:
        # Text for numbers (parsed per row, see ModelScorer) and for strings such as "00123".
        return {name: pa.string() for name in [*self._numeric, *self._strings]}

    def problems(self, schema: pa.Schema, text: tuple[str, ...]) -> list[str]:
        # The deployment is the judge of what a batch needs: ask it with no rows.
        fields = [
            pa.field(f.name, self._numeric[f.name]) if f.name in text and f.name in self._numeric else f for f in schema
        ]
        batch = pa.RecordBatch.from_pylist([], schema=pa.schema(fields))
        try:
            self.deployment.score(batch)
        except InputError as exc:
            return [exc.message]
        return []

    def parse_text(self, batch: pa.RecordBatch, text: tuple[str, ...]):
        return _parse_numbers(batch, {n: t for n, t in self._numeric.items() if n in text})

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self.deployment.score(batch)


# Deployments rebuilt from pickles in this process, by content: a Ray or Spark worker unpickles the
# scorer for every task, and compiling and warming a deployment each time would dominate.
_REBUILT: dict[str, object] = {}
_REBUILT_LOCK = threading.Lock()


def _rebuild(state: dict):
    from scoreline.engine.pipeline.deployment import Deployment

    manifest = decode_manifest(state["manifest"])
    folder = Path(tempfile.gettempdir()) / "scoreline-deployments" / state["token"]
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / Path(manifest.model.artifact).name
    for name, data in {artifact.name: state["artifact"], **state.get("checks", {})}.items():
        if not (folder / name).exists():
            partial = folder / f".{name}.{os.getpid()}"
            partial.write_bytes(data)
            os.replace(partial, folder / name)  # several worker processes may race to write it
    manifest = msgspec.structs.replace(manifest, model=msgspec.structs.replace(manifest.model, artifact=artifact.name))
    return Deployment(manifest, folder, version=state["version"])


def _parse_numbers(batch: pa.RecordBatch, targets: dict[str, pa.DataType]):
    """Text columns -> numbers; ``(batch, per-row errors or None)``: a value that is not a number
    becomes null and its row gets a reason naming the column and the value."""
    errors = None
    for name, target in targets.items():
        index = batch.schema.get_field_index(name)
        if index < 0 or not _is_text(batch.schema.field(index).type):
            continue
        text = pc.utf8_trim_whitespace(batch.column(index))
        try:
            parsed, bad = pc.cast(text, target), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed, bad = _parse_slowly(text, target, name)
        batch = batch.set_column(index, pa.field(name, target), parsed)
        if bad is not None:
            errors = bad if errors is None else pc.coalesce(errors, bad)
    return batch, errors


def _parse_slowly(text: pa.Array, target: pa.DataType, name: str):
    # Only a batch holding a bad value comes here (Arrow's cast refuses the whole column).
    convert, what = (int, "an integer") if pa.types.is_integer(target) else (float, "a number")
    values, reasons = [], []
    for value in text.to_pylist():
        try:
            # Readers that know one null marker only (Spark's CSV) leave the others to us.
            values.append(None if value is None or value in _sources.CSV_NULL_VALUES else convert(value))
            reasons.append(None)
        except ValueError:
            values.append(None)
            reasons.append(f"column {name!r}: {value!r} is not {what}")
    return pa.array(values, target), pa.array(reasons, pa.string())
