"""Bulk scoring: stream RecordBatches from files (or any iterator) through a deployment or a bare
model, with reading, scoring and writing overlapped on threads and memory bounded by batch size.

Every row read comes out exactly once: in the output when it was scored, in the rejects (its kept
columns, where it came from, and the reason) when its ``error`` is set.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from scoreline.engine.bulk import sources as _sources
from scoreline.engine.bulk.batches import REJECT_FIELDS as _REJECT_FIELDS
from scoreline.engine.bulk.batches import check_schema, check_sources, score_batch, score_columns, split_rejects
from scoreline.engine.bulk.scorers import DeploymentScorer, ModelScorer, as_scorer, load_model_file
from scoreline.errors import InputError

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
            check_schema(scorer, batch.schema, keep, (), "batch")
            checked.append(batch.schema)
        return score_columns(scorer, batch, keep, ())

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
        return job.split(score_columns(job.scorer, batch, job.keep, text), srcs[index].path, offset)

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
        return split_rejects(scored, source, first_row, self.output_schema, self.rejects_schema)

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
    keep_schema = check_sources(scorer, srcs, keep)
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
