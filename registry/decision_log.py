"""The decision log: every scored row appended off the request path, durable in SQLite or PostgreSQL.

``DecisionLog(url)`` with ``sqlite:///path.db`` (WAL mode) or ``postgresql://...``, both through
ADBC, so a batch goes into the database as Arrow (``adbc_ingest``) without a row loop.
``append`` only puts the batch on a bounded queue and ``append_row`` a tuple on a deque (the
request path's one buffer: no Arrow, about 100 ns); one writer thread drains both and writes a
transaction per batch of rows (when ``batch_rows`` are waiting, ``flush_interval`` seconds after
the first waiting row, or at once when someone waits for a commit). ``flush()`` returns when
everything appended before it is committed; ``on_committed(callback)`` is its non-blocking form
(durable answers: the server sends an answer when its callback fires; the callbacks that arrive
while a transaction is written share the next one: group commit). ``close()`` (also run at exit)
flushes and stops the writer.
"""

from __future__ import annotations

import atexit
import collections
import datetime as _dt
import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import InputError, NotReadyError, SchemaError

__all__ = ["DecisionLog", "DECISION_SCHEMA"]

_log = logging.getLogger("scoreline.decision_log")

# Every field is nullable in the schema, so producers' plain batches match it exactly (and skip
# any conversion); append() checks that ts, model_id and model_version have no nulls.
DECISION_SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")),
    ("request_id", pa.string()),
    ("model_id", pa.string()),
    ("model_version", pa.int64()),
    ("entity_key", pa.string()),
    ("score", pa.float64()),           # null when the row has an error
    ("decision", pa.string()),
    ("latency_us", pa.float64()),
    ("error", pa.string()),
    # experiments (registry/experiments.py): the experiment's name and the row's role there
    # (champion, challenger, canary, or shadow: scored on the same request, never answered);
    # null outside an experiment. Tables made before these columns get them on open.
    ("experiment", pa.string()),
    ("role", pa.string()),
    # the bytes that decided: the version's artifact, hashed at load (engine/pipeline/golden.py)
    ("artifact_sha256", pa.string()),
    ("reasons", pa.string()),          # reason codes given with the answer, comma-separated
])
_REQUIRED = ("ts", "model_id", "model_version")

STATS_SCHEMA = pa.schema([
    ("model_id", pa.string()),
    ("model_version", pa.int64()),
    ("calls", pa.int64()),
    ("errors", pa.int64()),
    ("mean_latency_us", pa.float64()),
    ("p50_latency_us", pa.float64()),
    ("p99_latency_us", pa.float64()),
    ("last_call", pa.timestamp("us", tz="UTC")),
])

_SQL_TYPES = {
    "sqlite": {"ts": "TEXT", "request_id": "TEXT", "model_id": "TEXT", "model_version": "INTEGER",
               "entity_key": "TEXT", "score": "REAL", "decision": "TEXT", "latency_us": "REAL",
               "error": "TEXT", "experiment": "TEXT", "role": "TEXT", "artifact_sha256": "TEXT",
               "reasons": "TEXT"},
    "postgresql": {"ts": "TIMESTAMPTZ", "request_id": "TEXT", "model_id": "TEXT",
                   "model_version": "BIGINT", "entity_key": "TEXT", "score": "DOUBLE PRECISION",
                   "decision": "TEXT", "latency_us": "DOUBLE PRECISION", "error": "TEXT",
                   "experiment": "TEXT", "role": "TEXT", "artifact_sha256": "TEXT", "reasons": "TEXT"},
}
# SQLite's ADBC driver infers each result column's type from the first rows it sees (an all-null
# column becomes int64, and a later string then fails the read), so SQLite reads start with one
# typed row of these literals, dropped after the fetch.
_SQLITE_LITERALS = {pa.string(): "''", pa.int64(): "0", pa.float64(): "0.0"}
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STOP = object()


class DecisionLog:
    """An append-only log of decisions in a SQLite or PostgreSQL table.

    Parameters: ``url`` (``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql://user@host:port/db``); ``table`` (created if absent); ``batch_rows`` and
    ``flush_interval`` (seconds), when the writer commits; ``max_queue`` (batches waiting);
    ``put_timeout``, how long ``append`` may wait for room in a full queue before it drops the
    batch (counted in :attr:`dropped_rows` and logged as a warning, never silently).
    """

    def __init__(self, url: str, *, table: str = "decisions", batch_rows: int = 10_000,
                 flush_interval: float = 0.2, max_queue: int = 10_000,
                 put_timeout: float = 0.5) -> None:
        if not _TABLE.fullmatch(table):
            raise SchemaError(f"invalid decision log table name {table!r}", path="table")
        self.url = url
        self.table = table
        self.dialect, self._target = _parse_url(url)
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.put_timeout = put_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._rows: collections.deque = collections.deque()  # append_row's tuples
        self._dropped = 0
        self._lost = 0
        self._error: BaseException | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader: Any = None  # an ADBC connection (untyped), opened on the first read
        self._count_lock = threading.Lock()
        # Open and prepare the table here so a bad URL fails in the caller, not in the thread.
        try:
            self._writer_conn = self._connect()
            self._create_table(self._writer_conn)
        except NotReadyError:
            raise
        except Exception as exc:  # the driver's own error classes: say which log, keep the cause
            raise NotReadyError(f"cannot open the decision log {_redact(url)!r}: "
                                f"{_redact(' '.join(str(exc).split()))}", path="log") from exc
        self._thread = threading.Thread(target=self._run, name=f"decision-log-{table}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"DecisionLog({_redact(self.url)!r}, table={self.table!r})"

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the request path ---------------------------------------------------------------------

    def append(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Queue rows for writing and return at once.

        Columns are matched by name to :data:`DECISION_SCHEMA` and cast to its types;
        ``model_id`` and ``model_version`` are required, a missing ``ts`` becomes now, other
        missing columns become null. An unknown column raises SchemaError (a typo would lose data).
        """
        if self._closed:
            raise NotReadyError("the decision log is closed", path="decision-log")
        if not batch.schema.equals(DECISION_SCHEMA):
            batch = _conform(batch)
        for name in _REQUIRED:
            if batch.column(name).null_count:
                raise InputError(f"decision log column {name!r} has nulls", path=f"column {name!r}")
        if batch.num_rows == 0:
            return
        try:
            self._queue.put(batch, timeout=self.put_timeout)
        except queue.Full:
            with self._count_lock:
                self._dropped += batch.num_rows
            _log.warning("decision log %s: queue full for %.1fs, dropped %d rows (%d in all)",
                         self.table, self.put_timeout, batch.num_rows, self._dropped)

    def append_row(self, row: tuple) -> None:
        """Queue one decision as a tuple in DECISION_SCHEMA's order (ts as microseconds since the
        epoch, UTC); thread-safe, no checks, no Arrow: the request path's cost is a deque append.
        Rows are written with the next transaction."""
        self._rows.append(row)

    def on_committed(self, callback) -> None:
        """Call ``callback()`` (on the writer thread; keep it short) once every row appended
        before this call is committed. Rows waiting for it are written at once, with whatever
        else waits: concurrent callers share one transaction."""
        if self._closed:
            callback()
            return
        self._queue.put(_Callback(callback), timeout=self.put_timeout)

    @property
    def dropped_rows(self) -> int:
        """Rows refused because the queue stayed full for ``put_timeout`` seconds."""
        return self._dropped

    @property
    def last_error(self) -> BaseException | None:
        """The writer's latest database error (None once a write succeeds again)."""
        return self._error

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every row appended before this call is committed.

        Raises NotReadyError if that has not happened within ``timeout`` seconds (the database is
        failing: the rows stay queued and the writer keeps retrying).
        """
        if self._closed:
            return
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            raise NotReadyError(f"decision log: queue still full after {timeout}s",
                                path="decision-log") from None
        if not done.wait(timeout):
            raise NotReadyError(
                f"decision log: rows not committed after {timeout}s (last error: {self._error})",
                path="decision-log",
            )

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, stop the writer and close the connections (idempotent).

        Raises NotReadyError if queued rows could not be written.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            self._queue.put(_STOP)
            self._thread.join(timeout)
            _close_quietly(self._writer_conn)
            _close_quietly(self._reader)
        if self._lost:
            raise NotReadyError(f"decision log: {self._lost} rows could not be written "
                                f"({self._error})", path="decision-log")

    # --- queries ------------------------------------------------------------------------------

    def tail(self, n: int = 20, model_id: str | None = None) -> pa.Table:
        """The latest ``n`` rows (of one model, if given), oldest first, as DECISION_SCHEMA."""
        cols = ", ".join(DECISION_SCHEMA.names)
        where, params = ("WHERE model_id = ?", [model_id]) if model_id is not None else ("", [])
        if self.dialect == "sqlite":
            # rowid breaks ties between rows of one batch, which share a timestamp
            inner = (f"SELECT {cols}, rowid AS _seq FROM {self.table} {where} "
                     f"ORDER BY ts DESC, rowid DESC LIMIT {int(n)}")
            table = self._sqlite_query(inner, params, DECISION_SCHEMA, "ts, _seq")
        else:
            where = where.replace("?", "$1")
            sql = (f"SELECT {cols} FROM (SELECT {cols}, seq FROM {self.table} {where} "
                   f"ORDER BY ts DESC, seq DESC LIMIT {int(n)}) AS t ORDER BY ts, seq")
            table = self._query(sql, params)
        return _normalize(table, DECISION_SCHEMA)

    def stats(self, since: _dt.datetime | _dt.timedelta | None = None) -> pa.Table:
        """Per model and version: calls, errors, mean/p50/p99 latency (µs) and the last call.

        ``since``: only calls at or after this time (a datetime, naive means UTC) or within this
        long before now (a timedelta); None: all calls. Computed in SQL, a scan of the rows
        counted (about a second per million rows on SQLite). Percentiles are nearest-rank (the
        smallest latency with at least that share of calls at or below it): PostgreSQL's
        ``percentile_disc``, and the same rank picked with a window function on SQLite.
        """
        where, params = "", []
        if since is not None:
            if isinstance(since, _dt.timedelta):
                since = _dt.datetime.now(_dt.timezone.utc) - since
            if since.tzinfo is None:
                since = since.replace(tzinfo=_dt.timezone.utc)
            where = "WHERE ts >= ?" if self.dialect == "sqlite" else "WHERE ts >= $1::timestamptz"
            # the stored text form on SQLite, so the comparison is by time
            params = [since.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")]
        common = """model_id, model_version, COUNT(*) AS calls,
                   SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS errors,
                   AVG(latency_us) AS mean_latency_us"""
        if self.dialect == "postgresql":
            sql = f"""
                SELECT {common},
                       percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_us) AS p50_latency_us,
                       percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_us) AS p99_latency_us,
                       MAX(ts) AS last_call
                FROM {self.table} {where} GROUP BY model_id, model_version
                ORDER BY model_id, model_version"""
            return _normalize(self._query(sql, params), STATS_SCHEMA)
        sql = f"""
            WITH ranked AS (
                SELECT model_id, model_version, ts, error, latency_us,
                       ROW_NUMBER() OVER (PARTITION BY model_id, model_version ORDER BY
                           CASE WHEN latency_us IS NULL THEN 1 ELSE 0 END, latency_us) AS rn,
                       COUNT(latency_us) OVER (PARTITION BY model_id, model_version) AS n_lat
                FROM {self.table} {where})
            SELECT {common},
                   MIN(CASE WHEN latency_us IS NOT NULL AND rn >= 0.5 * n_lat
                       THEN latency_us END) AS p50_latency_us,
                   MIN(CASE WHEN latency_us IS NOT NULL AND rn >= 0.99 * n_lat
                       THEN latency_us END) AS p99_latency_us,
                   MAX(ts) AS last_call
            FROM ranked GROUP BY model_id, model_version"""
        table = self._sqlite_query(f"SELECT *, 0 AS _seq FROM ({sql})", params, STATS_SCHEMA,
                                   "model_id, model_version")
        return _normalize(table, STATS_SCHEMA)

    # --- internals ----------------------------------------------------------------------------

    def _connect(self):
        if self.dialect == "sqlite":
            import adbc_driver_sqlite.dbapi as driver

            conn = driver.connect(self._target, autocommit=True)
            cur = conn.cursor()
            # Another process may be writing, or opening the same new file (the workers of
            # `serve --workers N` all start at once): wait for its locks, before anything here
            # takes one -- switching a new file to WAL needs an exclusive lock.
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
            # FULL: a commit is on disk when flush() returns; commits are batched, so the fsync
            # is paid once per batch, not per row.
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()
            return conn
        try:
            import adbc_driver_postgresql.dbapi as driver
        except ImportError:
            raise NotReadyError("a postgresql:// decision log needs adbc-driver-postgresql "
                                "(pip install 'scoreline[postgres]')", path="decision-log") from None
        return driver.connect(self._target, autocommit=True)

    def _create_table(self, conn) -> None:
        types = _SQL_TYPES[self.dialect]
        cols = ", ".join(f"{name} {types[name]}" for name in DECISION_SCHEMA.names)
        if self.dialect == "postgresql":
            # insertion order, to keep the rows of one batch (which share a timestamp) in order;
            # SQLite has its rowid
            cols += ", seq BIGSERIAL"
        cur = conn.cursor()
        try:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({cols})")
            _add_missing_columns(cur, self.dialect, self.table, types)
            # tail() reads these backwards: newest rows first, for all models or one
            order = "ts, seq" if self.dialect == "postgresql" else "ts"
            cur.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_ts ON {self.table} ({order})")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_model_ts "
                        f"ON {self.table} (model_id, {order})")
        finally:
            cur.close()

    def _query(self, sql: str, params: list) -> pa.Table:
        with self._read_lock:
            try:
                return self._read(sql, params)
            except Exception:
                # a dropped reader connection (server restart) is replaced once, transparently
                reader, self._reader = self._reader, None
                _close_quietly(reader)
            return self._read(sql, params)

    def _read(self, sql: str, params: list) -> pa.Table:
        if self._reader is None:
            self._reader = self._connect()
        cur = self._reader.cursor()
        try:
            cur.execute(sql, params or None)
            return cur.fetch_arrow_table()
        finally:
            cur.close()

    def _sqlite_query(self, inner: str, params: list, schema: pa.Schema, order: str) -> pa.Table:
        """Run ``inner`` (selecting ``schema``'s columns, then a ``_seq`` sort column) on SQLite."""
        names = ", ".join(schema.names)
        typed = ", ".join(f"{_SQLITE_LITERALS.get(f.type, chr(39) * 2)} AS {f.name}" for f in schema)
        sql = (f"SELECT {names} FROM (SELECT {typed}, 0 AS _seq, 0 AS _typed UNION ALL "
               f"SELECT *, 1 AS _typed FROM ({inner})) ORDER BY _typed, {order}")
        return self._query(sql, params).slice(1)

    def _run(self) -> None:
        """The writer thread: gather rows, write them in one transaction, release flush waiters."""
        pending: list = []
        rows = 0
        waiters: list = []  # callables: a flush's Event.set, on_committed's callbacks
        deadline = None
        stopping = False
        failures = 0
        while True:
            # idle, it still looks at append_row's deque every flush_interval
            timeout = self.flush_interval if not pending else max(0.0, deadline - time.monotonic())
            idle = not pending  # this wait is the idle look at append_row's deque
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item.set)
                elif isinstance(item, _Callback):
                    waiters.append(item.callback)
                else:
                    if not pending:
                        deadline = time.monotonic() + self.flush_interval
                    pending.append(item)
                    rows += item.num_rows
                if rows >= self.batch_rows:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            # append_row's rows: taken after the queue, so a waiter queued after its rows sees them
            n = len(self._rows)
            if n:
                if not pending:
                    # found by the idle look, so they may have waited flush_interval already
                    deadline = time.monotonic() + (0.0 if idle else self.flush_interval)
                pending.append(_rows_batch([self._rows.popleft() for _ in range(n)]))
                rows += n
            due = pending and (stopping or waiters or rows >= self.batch_rows
                               or time.monotonic() >= deadline)
            if due:
                try:
                    self._write(pending)
                    pending, rows, failures, self._error = [], 0, 0, None
                except Exception as exc:  # the database is down or refusing: keep rows, retry
                    failures += 1
                    self._error = exc
                    _log.warning("decision log %s: write of %d rows failed (%s); retrying",
                                 self.table, rows, exc)
                    if stopping and failures >= 3:
                        self._lost += rows
                        _log.error("decision log %s: giving up on %d rows", self.table, rows)
                        pending, rows = [], 0
                    else:
                        time.sleep(min(0.05 * 2 ** failures, 2.0))
                        deadline = time.monotonic()
                        self._reconnect()
            if not pending:
                for release in waiters:
                    try:
                        release()
                    except Exception:  # a waiter's own failure must not stop the writer
                        _log.exception("decision log %s: a commit callback failed", self.table)
                waiters.clear()
                # an append racing close() may have queued rows behind the stop marker
                if stopping and self._queue.empty() and not self._rows:
                    return

    def _reconnect(self) -> None:
        """A fresh writer connection after a failed write (the server may have restarted)."""
        try:
            conn = self._connect()
        except Exception:  # still down: the next retry tries again
            return
        old, self._writer_conn = self._writer_conn, conn
        _close_quietly(old)

    def _write(self, pending: list) -> None:
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in pending]
        data = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        if self.dialect == "sqlite":
            # SQLite keeps timestamps as ISO 8601 text (UTC, no offset), which sorts by time.
            ts = pc.strftime(data.column("ts"), format="%Y-%m-%dT%H:%M:%S", locale="C")
            data = data.set_column(0, pa.field("ts", pa.string()), ts)
        cur = self._writer_conn.cursor()
        try:
            cur.adbc_ingest(self.table, data, mode="append")
        finally:
            cur.close()


def _add_missing_columns(cur, dialect: str, table: str, types: dict) -> None:
    """Migrate a table made by an older version: add the schema's columns it lacks (as nulls)."""
    if dialect == "sqlite":
        cur.execute(f"PRAGMA table_info({table})")
        have = {row[1] for row in cur.fetchall()}
    else:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                    "AND table_schema = current_schema()",
                    [table])
        have = {row[0] for row in cur.fetchall()}
    for name in DECISION_SCHEMA.names:
        if name not in have:
            cur.execute(f"ALTER TABLE {table} ADD COLUMN {name} {types[name]}")


class _Callback:
    __slots__ = ("callback",)

    def __init__(self, callback) -> None:
        self.callback = callback


_TS = pa.timestamp("us", tz="UTC")


def _rows_batch(rows: list[tuple]) -> pa.RecordBatch:
    """append_row's tuples as one batch of DECISION_SCHEMA."""
    ts, rid, model, version, key, score, decision, latency, error, experiment, role, sha256, reasons = zip(*rows)
    return pa.RecordBatch.from_arrays(
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
            pa.array(experiment, pa.string()),
            pa.array(role, pa.string()),
            pa.array(sha256, pa.string()),
            pa.array(reasons, pa.string()),
        ],
        schema=DECISION_SCHEMA,
    )


def _close_quietly(conn) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # a broken connection may refuse to close; dropping it is what matters
        pass


def _parse_url(url: str) -> tuple[str, str]:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not str(path):
            raise SchemaError(f"decision log URL {url!r} names no file", path="log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return "sqlite", str(path)
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    raise SchemaError(f"unsupported decision log URL {_redact(url)!r}: expected sqlite:///path.db "
                      "or postgresql://host/db", path="log")


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _conform(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    names = batch.schema.names
    unknown = [n for n in names if n not in DECISION_SCHEMA.names]
    if unknown:
        raise SchemaError(f"decision log rows have unknown columns {unknown}; expected some of "
                          f"{DECISION_SCHEMA.names}", path=f"column {unknown[0]!r}")
    n = batch.num_rows
    arrays = []
    for field in DECISION_SCHEMA:
        if field.name in names:
            col = batch.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = pc.cast(col, field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InputError(f"decision log column {field.name!r}: expected {field.type}, "
                                     f"got {col.type} ({exc})", path=f"column {field.name!r}") from None
        elif field.name == "ts":
            now = np.datetime64(_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None), "us")
            col = pa.array(np.full(n, now), pa.timestamp("us")).cast(field.type)
        elif field.name in _REQUIRED[1:]:
            raise InputError(f"decision log rows need a {field.name!r} column",
                             path=f"column {field.name!r}")
        else:
            col = pa.nulls(n, field.type)
        arrays.append(col)
    if isinstance(batch, pa.Table):
        return pa.Table.from_arrays(arrays, schema=DECISION_SCHEMA)
    return pa.RecordBatch.from_arrays(arrays, schema=DECISION_SCHEMA)


def _normalize(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast what the database returned (SQLite: text timestamps, inferred types) to ``schema``."""
    arrays = []
    for field in schema:
        col = table.column(field.name)
        if pa.types.is_timestamp(field.type) and pa.types.is_string(col.type):
            col = pc.cast(col, pa.timestamp("us"))
        if not col.type.equals(field.type):
            col = pc.cast(col, field.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema.remove_metadata())
