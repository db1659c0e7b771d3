"""File sources and sinks for bulk scoring: Parquet/Arrow IPC/CSV readers that stream RecordBatches,
and Parquet/Arrow IPC writers that appear under their final name only when complete."""

from __future__ import annotations

import glob
import itertools
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from scoreline.errors import InputError

__all__ = [
    "Source",
    "Malformed",
    "open_sources",
    "read_sources",
    "read_ahead",
    "output_format",
    "AtomicWriter",
    "FORMATS",
    "CSV_NULL_VALUES",
]

FORMATS = ("parquet", "arrow")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_ARROW_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv")
# CSV has no types: these values read as null (so as a missing value) in every column.
CSV_NULL_VALUES = ["", "NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "nan", "#N/A", "-"]


@dataclass(frozen=True)
class Source:
    """One input file: its format, its Arrow schema and (when the file says) its row count."""

    path: str
    format: str  # "parquet" | "arrow-file" | "arrow-stream" | "csv"
    schema: pa.Schema
    num_rows: int | None
    # CSV only: column name -> type to read it as (the rest are inferred from the first block)
    column_types: Mapping[str, pa.DataType] | None = None

    def batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The file's rows as RecordBatches of at most ``batch_size`` rows.

        Memory held at once is one batch plus what the format needs to produce it (a Parquet
        row group's column chunks, a CSV block), never the whole file. A CSV file's malformed
        lines (wrong number of fields) come as ``Malformed`` items between its batches.
        """
        if self.format == "parquet":
            # pre_buffer=False: with pyarrow's default (True) the reader keeps every row group it
            # has read, and memory grew with the file (a 10M-row, 10-row-group file: Arrow's peak
            # went from 72 to 373 MB); with a buffered stream it stays at one row group (22 MB).
            with pq.ParquetFile(self.path, memory_map=False, pre_buffer=False, buffer_size=1 << 20) as pf:
                yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        elif self.format in ("arrow-file", "arrow-stream"):
            yield from _rebatch(self._ipc_batches(columns), batch_size)
        else:
            yield from _rebatch(self._csv_batches(columns, batch_size), batch_size)

    def _ipc_batches(self, columns):
        # Read, not memory-mapped: mapped pages stay resident once touched, so the process's
        # memory would grow with the file; read batches are freed when their rows are written.
        with pa.OSFile(self.path) as source:
            if self.format == "arrow-file":
                reader = ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = iter(ipc.open_stream(source))
            for batch in batches:
                yield batch.select(columns) if columns is not None else batch

    def _csv_batches(self, columns, batch_size):
        malformed: list[str] = []

        def skip(row) -> str:
            # Arrow calls this on its parsing thread; the line is reported after its block.
            malformed.append(f"malformed CSV line: expected {row.expected_columns} fields, got "
                             f"{row.actual_columns}: {row.text[:200]!r}")
            return "skip"

        reader = _open_csv(self.path, self.column_types, columns, block_rows=batch_size, on_invalid=skip)
        with reader:
            for batch in reader:
                if malformed:
                    yield Malformed(tuple(malformed))
                    malformed.clear()
                yield batch
        if malformed:
            yield Malformed(tuple(malformed))


@dataclass(frozen=True)
class Malformed:
    """Lines of a CSV file that do not parse as rows (wrong number of fields): each is a row read
    that becomes a reject, with this reason, instead of stopping the job."""

    reasons: tuple[str, ...]

    @property
    def num_rows(self) -> int:
        return len(self.reasons)


def open_sources(
    spec: str | os.PathLike | list, *, column_types: Mapping[str, pa.DataType] | None = None
) -> list[Source]:
    """Resolve an input (a file, a directory of Parquet/Arrow/CSV files, a glob, or a list of these)
    to its files, reading each file's schema (and row count when the format stores it).

    ``column_types`` fixes the type of named CSV columns (ignored for typed formats).
    Raises ``InputError`` when nothing matches or a file is unreadable.
    """
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    paths: list[str] = []
    for item in specs:
        paths.extend(_expand(os.fspath(item)))
    if not paths:
        raise InputError(f"no input files match {', '.join(map(str, specs))}", path="input")
    return [_open(path, column_types) for path in paths]


def _expand(spec: str) -> list[str]:
    if os.path.isdir(spec):
        found = []
        for root, dirs, files in os.walk(spec):
            # Hidden and underscore files are Spark/Hive markers (_SUCCESS) or unfinished
            # writes (.x.tmp-...): never inputs.
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            for name in sorted(files):
                if not name.startswith((".", "_")) and name.lower().endswith(
                    _PARQUET_SUFFIXES + _ARROW_SUFFIXES + _CSV_SUFFIXES
                ):
                    found.append(os.path.join(root, name))
        return found
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not os.path.exists(spec):
        raise InputError(f"input {spec!r} does not exist", path="input")
    return [spec]


def _open(path: str, column_types) -> Source:
    fmt = _sniff(path)
    try:
        if fmt == "parquet":
            meta = pq.read_metadata(path)
            return Source(path, fmt, meta.schema.to_arrow_schema(), meta.num_rows)
        if fmt == "arrow-file":
            with pa.memory_map(path) as f:
                reader = ipc.open_file(f)
                rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
                return Source(path, fmt, reader.schema, rows)
        if fmt == "arrow-stream":
            with pa.memory_map(path) as f:
                return Source(path, fmt, ipc.open_stream(f).schema, None)
        # Only the schema: malformed lines are skipped here and reported when the rows are read.
        with _open_csv(path, column_types, None, block_rows=1024, on_invalid=lambda row: "skip") as reader:
            schema = reader.schema
        return Source(path, "csv", schema, None, dict(column_types or {}))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InputError(f"cannot read {path!r} as {fmt}: {exc}", path=path) from None


def _sniff(path: str) -> str:
    """The format by content (magic bytes), with the extension deciding only for CSV."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:6] == b"ARROW1":
        return "arrow-file"
    if head[:4] == b"\xff\xff\xff\xff":
        return "arrow-stream"
    lower = path.lower()
    if lower.endswith(_PARQUET_SUFFIXES + _ARROW_SUFFIXES):
        raise InputError(f"{path!r} is named like Parquet/Arrow but is neither", path=path)
    return "csv"


def _open_csv(path, column_types, columns, *, block_rows: int, on_invalid=None):
    # Arrow's CSV reader counts blocks in bytes: ~64 bytes a row turns a row budget into one.
    read = pacsv.ReadOptions(block_size=max(1 << 16, min(block_rows * 64, 64 << 20)))
    convert = pacsv.ConvertOptions(
        column_types=dict(column_types or {}),
        null_values=CSV_NULL_VALUES,
        strings_can_be_null=True,
        include_columns=columns,
    )
    parse = pacsv.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ",", invalid_row_handler=on_invalid)
    return pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Split batches larger than ``size`` (zero-copy slices); smaller ones pass as they are."""
    for batch in batches:
        if isinstance(batch, Malformed) or 0 < batch.num_rows <= size:
            yield batch
        elif batch.num_rows > size:
            for start in range(0, batch.num_rows, size):
                yield batch.slice(start, size)


def output_format(path: str | os.PathLike, explicit: str | None = None) -> str:
    """``"parquet"`` or ``"arrow"``: ``explicit`` if given, else from the file's extension."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise InputError(f"unknown output format {explicit!r}; expected one of {FORMATS}", path="format")
        return explicit
    lower = os.fspath(path).lower()
    if lower.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(_ARROW_SUFFIXES):
        return "arrow"
    raise InputError(
        f"cannot tell the output format of {os.fspath(path)!r}: name it .parquet or .arrow, or pass a format",
        path="output",
    )


def _umask() -> int:
    # Read, not set: os.umask() would change it for every thread for a moment.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


class AtomicWriter:
    """Writes RecordBatches to ``<dir>/.<name>.tmp-XXXX`` and renames it to ``path`` on ``commit()``.

    The temporary file sits in the destination's folder so the rename is atomic (same file
    system), and its hidden ``.tmp`` name never looks like a finished output. ``abort()`` (or
    leaving a ``with`` block by an exception, KeyboardInterrupt included) removes it. The file is
    created on the first batch; ``commit()`` with no batch written creates an empty file with
    the schema.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, fmt: str) -> None:
        self.path = Path(path)
        self.schema = schema
        self.format = fmt
        self.rows = 0
        self._tmp: str | None = None
        self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._open()
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
        # mkstemp makes the file private (0600); a finished output gets the usual mode instead.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        else:
            self._writer = ipc.new_file(self._tmp, self.schema)

    def commit(self) -> Path:
        """Close the file and move it to its final name; returns that name."""
        if self._writer is None:
            self._open()
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away anyway
                pass
            self._writer = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> "AtomicWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._tmp is not None:
            self.abort()


# --- reading ahead on threads -----------------------------------------------------------------

_DONE = object()
_POLL = 0.1  # seconds: how long a blocked queue call waits before looking at the stop flag


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(
    producers: list[Callable[[], Iterable]],
    *,
    parallel: int,
    depth: int,
    stop: threading.Event | None = None,
) -> Iterator:
    """Run ``producers`` (each returns an iterable) on ``parallel`` daemon threads and yield their
    items as they come, at most ``depth`` waiting: reading overlaps whatever the consumer does.

    An exception in a producer is raised in the consumer. Setting ``stop`` (or closing this
    generator) makes the threads give up at their next item; blocked calls poll ``stop`` so a
    Ctrl-C in the consumer never waits on a reader.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    halt = threading.Event()  # this generator is done (finished, failed or closed)
    stopped = (lambda: halt.is_set() or stop.is_set()) if stop is not None else halt.is_set
    counter = itertools.count()  # next() on a count is atomic under the GIL

    def put(item) -> bool:
        while not stopped():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stopped():
                index = next(counter)
                if index >= len(producers):
                    break
                for item in producers[index]():
                    if not put(item):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            put(_Failure(exc))
        finally:
            put(_DONE)

    threads = [
        threading.Thread(target=work, name=f"scoreline-read-{i}", daemon=True) for i in range(max(1, parallel))
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            try:
                item = q.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _DONE:
                running -= 1
            elif isinstance(item, _Failure):
                raise item.exc
            else:
                yield item
    finally:
        halt.set()


def read_sources(
    sources: list[Source],
    *,
    batch_size: int,
    columns: Callable[[pa.Schema], list[str] | None],
    parallel: int,
    depth: int,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """``(source index, first row's number in its file, batch)`` for every batch of every source,
    ``parallel`` files read at once; batches of one file come in order. A CSV file's malformed
    lines come as ``Malformed`` items in place of a batch (they do not advance the row number)."""

    def producer(index: int) -> Callable[[], Iterator]:
        def batches():
            offset = 0
            src = sources[index]
            for batch in src.batches(batch_size, columns(src.schema)):
                yield index, offset, batch
                if not isinstance(batch, Malformed):
                    offset += batch.num_rows

        return batches

    return read_ahead([producer(i) for i in range(len(sources))], parallel=parallel, depth=depth, stop=stop)
