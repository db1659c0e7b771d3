"""Entity stores: fetch a whole batch of entities' raw inputs by key, as Arrow, aligned with the keys.

``open_store(spec, base_dir)`` builds a store from a manifest's store spec; every store answers
``lookup(keys, columns) -> (table, found)``: one row per key, in the keys' order, with the
requested columns; a key that is absent (or null, or not a valid key) gives ``found[i] = False``
and a null row. The caller turns that into a per-row "not found" error, never into defaults.

- Parquet (a file, a folder of files or a glob) and Arrow IPC files are loaded into memory with a
  key index (a direct offset -> row table for dense integer keys, else sorted keys), so a lookup
  is one gather or ``searchsorted`` and one Arrow ``take``. The files are checked
  for changes at most every ``reload_interval`` seconds; a changed table is loaded on a background
  thread and swapped in whole, so lookups never wait for a reload.
- SQLite and PostgreSQL tables are read through ADBC, one query per batch of keys, with a
  connection per thread.
"""

from __future__ import annotations

import abc
import glob as _glob
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from scoreline.engine.data.keyindex import KeyIndex, coerce_keys, python_keys, take_rows
from scoreline.registry.manifest import (
    ArrowStore,
    ParquetStore,
    PostgresStore,
    SqliteStore,
)

from scoreline.errors import NotFoundError, NotReadyError, SchemaError

__all__ = ["EntityStore", "open_store"]

_log = logging.getLogger("scoreline.entities")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def open_store(spec, base_dir: str | os.PathLike, *, reload_interval: float = 2.0) -> EntityStore:
    """The store a manifest's ``entity.store`` describes; relative paths resolve against base_dir.

    ``reload_interval``: for file stores, the least number of seconds between checks for changed
    files (checks run on lookup, on a background thread).
    """
    base = Path(base_dir)
    if isinstance(spec, ParquetStore):
        return FileStore(_parquet_source(spec.path, base), spec.key_column,
                         reload_interval=reload_interval)
    if isinstance(spec, ArrowStore):
        return FileStore(_arrow_source(spec.path, base), spec.key_column,
                         reload_interval=reload_interval)
    if isinstance(spec, SqliteStore):
        return SqliteTableStore(_resolve(spec.path, base), spec.table, spec.key_column)
    if isinstance(spec, PostgresStore):
        return PostgresTableStore(spec.uri, spec.table, spec.key_column)
    raise SchemaError(f"unsupported entity store {type(spec).__name__}", path="$.entity.store")


class EntityStore(abc.ABC):
    """What every store offers: ``key_column``, ``schema`` (all columns), ``lookup`` and ``close``."""

    key_column: str
    schema: pa.Schema

    @abc.abstractmethod
    def lookup(self, keys, columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        """Rows for ``keys`` (an Arrow array, a list or a numpy array), in the keys' order.

        ``columns``: the store columns to return (default: all but the key). Returns the table
        and ``found``, a bool numpy array; rows not found are null.
        """

    def snapshot(self):
        """The data held in memory now, for readers that convert it once (engine/data/storeview.py):
        an object with ``table`` (every column) and ``index`` (``find(keys, valid) -> (rows,
        found)``, ``is_int``), replaced by a new object when the files change; None for a store
        that holds nothing in memory (a database)."""
        return None

    def refresh(self) -> None:
        """Check the store's files for changes now and then (cheap; a reload runs in the
        background and shows as a new `snapshot`)."""

    def close(self) -> None:
        """Release files and connections; the store is unusable afterwards."""

    def __enter__(self) -> EntityStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        names = self.schema.names
        if columns is None:
            return [n for n in names if n != self.key_column]
        missing = [c for c in columns if c not in names]
        if missing:
            raise SchemaError(f"entity store has no column {missing[0]!r} (columns: "
                              f"{', '.join(names)})", path=f"column {missing[0]!r}")
        return list(columns)


# --- in-memory file stores --------------------------------------------------------------------


class _Source:
    """How to read a file store's table and fingerprint its files."""

    def __init__(self, describe: str, files: Callable[[], list[Path]],
                 read: Callable[[list[Path]], pa.Table]) -> None:
        self.describe = describe
        self.files = files
        self.read = read

    def signature(self) -> tuple:
        sig = []
        for f in self.files():
            st = os.stat(f)
            sig.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)


class _Loaded:
    """One immutable snapshot: the table, its key index and the files' signature."""

    def __init__(self, table: pa.Table, index: KeyIndex, signature: tuple) -> None:
        self.table = table
        self.index = index
        self.signature = signature
        # requested columns -> the selected table: a dict probe instead of a select (~1.5 µs)
        # per single-entity lookup; threads racing on a miss store equal values
        self.selected: dict[tuple | None, pa.Table] = {}


class FileStore(EntityStore):
    """Parquet or Arrow IPC data held in memory, indexed by key, reloaded when the files change."""

    def __init__(self, source: _Source, key_column: str, *, reload_interval: float = 2.0) -> None:
        self.source = source
        self.key_column = key_column
        self.reload_interval = reload_interval
        self.last_error: BaseException | None = None
        self._reload_lock = threading.Lock()
        self._state = self._load()
        self.schema = self._state.table.schema
        self._next_check = time.monotonic() + reload_interval

    def __repr__(self) -> str:
        return f"FileStore({self.source.describe}, key={self.key_column!r}, rows={self.num_rows})"

    @property
    def num_rows(self) -> int:
        return self._state.table.num_rows

    def snapshot(self) -> _Loaded:
        return self._state

    def refresh(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.reload_interval
            self._reload_in_background()

    def lookup(self, keys, columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        state = self._state                     # one snapshot for the whole batch
        self.refresh()
        wanted = None if columns is None else tuple(columns)
        table = state.selected.get(wanted)
        if table is None:
            table = state.selected[wanted] = state.table.select(self._columns(columns))
        values, valid = coerce_keys(keys, state.index.is_int)
        rows, found = state.index.find(values, valid)
        return take_rows(table, rows, found), found

    def reload(self) -> bool:
        """Reload now if the files changed (blocking); True when a new snapshot was swapped in."""
        with self._reload_lock:
            try:
                if self.source.signature() == self._state.signature:
                    return False
                state = self._load()
            except Exception as exc:  # a file mid-write, or gone: keep serving the old snapshot
                self.last_error = exc
                _log.warning("entity store %s: reload failed, keeping the loaded data: %s",
                             self.source.describe, exc)
                return False
            if not state.table.schema.equals(self.schema):
                self.last_error = SchemaError(
                    f"entity store {self.source.describe}: the new files have a different schema "
                    f"({state.table.schema.names}); keeping the loaded data")
                _log.warning("%s", self.last_error.message)
                return False
            self._state = state                 # an attribute swap: atomic for readers
            self.last_error = None
            return True

    def _reload_in_background(self) -> None:
        if self._reload_lock.locked():
            return                              # a reload is already running
        threading.Thread(target=self.reload, name="entity-store-reload", daemon=True).start()

    def _load(self) -> _Loaded:
        signature = self.source.signature()
        files = [Path(f[0]) for f in signature]
        table = self.source.read(files)
        if self.key_column not in table.schema.names:
            raise SchemaError(f"entity store {self.source.describe} has no key column "
                              f"{self.key_column!r} (columns: {', '.join(table.schema.names)})",
                              path="$.entity.store.key-column")
        # One chunk per column makes `take` one gather instead of one per file or row group.
        table = table.combine_chunks()
        index = KeyIndex(table.column(self.key_column), f"entity store {self.source.describe}")
        return _Loaded(table, index, signature)


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


def _parquet_source(path: str, base: Path) -> _Source:
    target = _resolve(path, base)
    is_glob = any(ch in path for ch in "*?[")

    def files() -> list[Path]:
        if is_glob:
            found = sorted(Path(p) for p in _glob.glob(str(target), recursive=True))
        elif target.is_dir():
            found = sorted(target.rglob("*.parquet"))
        else:
            found = [target] if target.exists() else []
        if not found:
            raise NotFoundError(f"entity store: no Parquet files at {str(target)!r}",
                                path="$.entity.store.path")
        return found

    def read(paths: list[Path]) -> pa.Table:
        import pyarrow.dataset as ds

        return ds.dataset([str(p) for p in paths], format="parquet").to_table()

    return _Source(f"parquet:{target}", files, read)


def _arrow_source(path: str, base: Path) -> _Source:
    target = _resolve(path, base)

    def files() -> list[Path]:
        if not target.is_file():
            raise NotFoundError(f"entity store: no Arrow IPC file at {str(target)!r}",
                                path="$.entity.store.path")
        return [target]

    def read(paths: list[Path]) -> pa.Table:
        # Read into memory (not memory-mapped): the file may be rewritten in place later.
        with pa.OSFile(str(paths[0])) as f:
            data = f.read()
        try:
            return pa.ipc.open_file(data).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(data).read_all()

    return _Source(f"arrow:{target}", files, read)


# --- database stores --------------------------------------------------------------------------


class _DatabaseStore(EntityStore):
    """One query per batch of distinct keys; the answer is re-aligned to the keys' order."""

    def __init__(self, table: str, key_column: str) -> None:
        for what, name in (("table", table), ("key-column", key_column)):
            if not _IDENT.fullmatch(name):
                raise SchemaError(f"entity store {what} {name!r} is not a plain SQL identifier",
                                  path=f"$.entity.store.{what}")
        self.table = table
        self.key_column = key_column
        self._local = threading.local()
        self._conns: list = []
        self._conns_lock = threading.Lock()
        self._closed = False

    def lookup(self, keys, columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        if self._closed:
            raise NotReadyError(f"entity store {self.table!r} is closed")
        cols = self._columns(columns)
        values, valid = coerce_keys(keys, self._key_is_int)
        wanted = np.unique(values[valid])
        result = self._query_retrying(wanted, cols) if len(wanted) else self._empty(cols)
        index = KeyIndex(result.column(self.key_column), f"entity store table {self.table!r}")
        rows, found = index.find(values, valid)
        return take_rows(result.select(cols), rows, found), found

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # a connection another thread is using; nothing more to do
                pass

    def _query_retrying(self, keys: np.ndarray, cols: list[str]) -> pa.Table:
        # A dropped connection (server restart, idle timeout) is replaced once, transparently;
        # a database that still fails makes the batch unscorable: NotReadyError (503), not a
        # per-row "not found".
        try:
            return self._query(keys, cols)
        except Exception:
            self._discard_connection()
        try:
            return self._query(keys, cols)
        except Exception as exc:
            self._discard_connection()
            raise NotReadyError(f"entity store table {self.table!r} cannot be read: "
                                f"{' '.join(str(exc).split())}", path="$.entity.store") from exc

    def _discard_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._conns_lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            try:
                conn.close()
            except Exception:  # already broken; dropping our reference is what matters
                pass

    def _cursor(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn.cursor()

    def _fetch(self, sql: str, params) -> pa.Table:
        cur = self._cursor()
        try:
            cur.execute(sql, params)
            return cur.fetch_arrow_table()
        finally:
            cur.close()

    def _empty(self, cols: list[str]) -> pa.Table:
        return self.schema.empty_table().select([self.key_column, *cols])

    @property
    def _key_is_int(self) -> bool:
        return pa.types.is_integer(self.schema.field(self.key_column).type)

    def _check_key(self) -> None:
        if self.key_column not in self.schema.names:
            raise SchemaError(f"entity store table {self.table!r} has no key column "
                              f"{self.key_column!r} (columns: {', '.join(self.schema.names)})",
                              path="$.entity.store.key-column")


# SQLite column affinity (from the declared type) -> the Arrow type and SQL cast returned.
def _sqlite_affinity(declared: str) -> tuple[pa.DataType, str, str]:
    d = declared.upper()
    if "INT" in d:
        return pa.int64(), "INTEGER", "0"
    if "BOOL" in d:
        return pa.bool_(), "INTEGER", "0"
    if any(t in d for t in ("REAL", "FLOA", "DOUB", "NUM", "DEC")):
        return pa.float64(), "REAL", "0.0"
    # TEXT, dates and timestamps (SQLite keeps them as ISO 8601 text) and untyped columns
    return pa.string(), "TEXT", "''"


class SqliteTableStore(_DatabaseStore):
    """A SQLite table through ADBC; each batch is ``key IN (SELECT value FROM json_each(?))``."""

    def __init__(self, path: Path, table: str, key_column: str) -> None:
        super().__init__(table, key_column)
        if not Path(path).is_file():
            raise NotFoundError(f"entity store: no SQLite database at {str(path)!r}",
                                path="$.entity.store.path")
        self.path = Path(path)
        info = self._fetch("SELECT name, type FROM pragma_table_info(?)", [table]).to_pylist()
        if not info:
            raise NotFoundError(f"entity store: SQLite database {str(path)!r} has no table {table!r}",
                                path="$.entity.store.table")
        self._affinity = {r["name"]: _sqlite_affinity(r["type"] or "") for r in info}
        self.schema = pa.schema([(name, a[0]) for name, a in self._affinity.items()])
        self._check_key()

    def __repr__(self) -> str:
        return f"SqliteTableStore({str(self.path)!r}, table={self.table!r})"

    def _connect(self):
        import adbc_driver_sqlite.dbapi as driver

        conn = driver.connect(str(self.path), autocommit=True)
        with conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout=10000")
        return conn

    def _query(self, keys: np.ndarray, cols: list[str]) -> pa.Table:
        names = [self.key_column, *cols]
        # SQLite's driver infers a result column's type from its first values (all-null -> int64),
        # so the first row is a typed row of literals, dropped below; CAST keeps every value of a
        # column one type.
        typed = ", ".join(f'{self._affinity[c][2]} AS "{c}"' for c in names)
        cast = ", ".join(f'CAST("{c}" AS {self._affinity[c][1]}) AS "{c}"' for c in names)
        quoted = ", ".join(f'"{c}"' for c in names)
        sql = (f"SELECT {quoted} FROM (SELECT {typed}, 0 AS _typed UNION ALL "
               f'SELECT {cast}, 1 FROM "{self.table}" WHERE "{self.key_column}" IN '
               f"(SELECT value FROM json_each(?))) ORDER BY _typed")
        table = self._fetch(sql, [json.dumps(python_keys(keys))]).slice(1)
        return pa.Table.from_arrays(
            [table.column(c).cast(self.schema.field(c).type) for c in names],
            schema=pa.schema([self.schema.field(c) for c in names]),
        )


class PostgresTableStore(_DatabaseStore):
    """A PostgreSQL table through ADBC; each batch is one ``WHERE key = ANY($1)`` query."""

    def __init__(self, uri: str, table: str, key_column: str) -> None:
        super().__init__(table, key_column)
        self.uri = uri
        try:
            self._cursor().close()
        except NotReadyError:
            raise
        except Exception as exc:  # the server is down or refuses us: not ready, not "not found"
            raise NotReadyError(f"entity store: cannot connect to PostgreSQL: "
                                f"{' '.join(str(exc).split())}", path="$.entity.store.uri") from None
        try:
            self.schema = self._fetch(f'SELECT * FROM "{table}" LIMIT 0', None).schema
        except Exception as exc:
            self._discard_connection()     # a failed statement leaves nothing to reuse
            raise NotFoundError(f"entity store: cannot read PostgreSQL table {table!r}: "
                                f"{' '.join(str(exc).split())}", path="$.entity.store.table") from None
        self._check_key()

    def __repr__(self) -> str:
        return f"PostgresTableStore(table={self.table!r})"

    def _connect(self):
        try:
            import adbc_driver_postgresql.dbapi as driver
        except ImportError:
            raise NotReadyError("a postgres entity store needs adbc-driver-postgresql "
                                "(pip install 'scoreline[postgres]')") from None
        return driver.connect(self.uri, autocommit=True)

    def _query(self, keys: np.ndarray, cols: list[str]) -> pa.Table:
        quoted = ", ".join(f'"{c}"' for c in [self.key_column, *cols])
        sql = f'SELECT {quoted} FROM "{self.table}" WHERE "{self.key_column}" = ANY($1)'
        return self._fetch(sql, [python_keys(keys)])
