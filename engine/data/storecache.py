"""Store wrappers: an LRU cache with a time to live in front of a remote store, stores joined by
key, and `lookup_rows`, the one way the pipeline reads any store (rows, found, per-row errors).

`CachedStore` keeps each entity's answer (its values, or its absence) for `ttl` seconds, at most
`size` entities, least recently used out first; a batch asks the store underneath only for its
misses, in one call. Absent entities are cached too (a flood of unknown keys must not reach the
database); per-row errors (a stale row) are not cached, so they are re-read. Entries are per
requested column set (a deployment always asks for the same one).

`JoinedStore` answers each column from the first of its stores that has it (customer profile from
PostgreSQL, recent balances from Redis): one lookup per store per batch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from scoreline.errors import SchemaError, ScorelineError
from scoreline.registry.manifest import CachedStore as CachedSpec
from scoreline.registry.manifest import JoinStore, RedisStore

from scoreline.engine.data.entities import EntityStore
from scoreline.engine.data.keyindex import coerce_keys

__all__ = ["CachedStore", "JoinedStore", "lookup_rows", "open_composite"]


def lookup_rows(store, keys, columns: Sequence[str] | None = None
                ) -> tuple[pa.Table, np.ndarray, dict[int, ScorelineError]]:
    """Any store's rows for `keys`: (table, found, row -> error); stores without per-row errors
    (files, SQL tables) report none."""
    rows = getattr(store, "lookup_rows", None)
    if rows is not None:
        return rows(keys, columns)
    table, found = store.lookup(keys, columns)
    return table, found, {}


def open_composite(spec, base_dir, open_store) -> EntityStore:
    """The store for a redis, cached or join spec (`open_store` opens the stores inside)."""
    if isinstance(spec, RedisStore):
        from scoreline.engine.data.redis_store import RedisEntityStore

        return RedisEntityStore(spec)
    if isinstance(spec, CachedSpec):
        return CachedStore(open_store(spec.store, base_dir), size=spec.size, ttl=spec.ttl)
    if isinstance(spec, JoinStore):
        return JoinedStore([open_store(s, base_dir) for s in spec.stores], found=spec.found)
    raise SchemaError(f"unsupported entity store {type(spec).__name__}", path="$.entity.store")


class CachedStore(EntityStore):
    """An LRU + TTL cache in front of `store` (see the module docstring)."""

    def __init__(self, store: EntityStore, *, size: int = 10_000, ttl: float = 5.0,
                 clock=time.monotonic) -> None:
        if size < 1 or ttl <= 0:
            raise SchemaError("a store cache needs size >= 1 and ttl > 0", path="$.entity.store")
        self.store = store
        self.key_column = store.key_column
        self.schema = store.schema
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._is_int = pa.types.is_integer(store.schema.field(store.key_column).type)
        # (columns, key) -> (expires, values tuple or None for absent)
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedStore({self.store!r}, size={self.size}, ttl={self.ttl:g})"

    def lookup(self, keys, columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        table, found, _ = self.lookup_rows(keys, columns)
        return table, found

    def lookup_rows(self, keys, columns: Sequence[str] | None = None):
        cols = tuple(self._columns(columns))
        values, valid = coerce_keys(keys, self._is_int)
        n = len(values)
        now = self._clock()
        cached: list = [None] * n
        miss = []
        with self._lock:
            entries = self._entries
            for i, key in enumerate(values.tolist()):
                if not valid[i]:
                    continue
                entry = entries.get((cols, key))
                if entry is not None and entry[0] > now:
                    entries.move_to_end((cols, key))
                    cached[i] = entry
                else:
                    miss.append(i)
            self.hits += n - len(miss) - int((~valid).sum())
            self.misses += len(miss)
        errors: dict[int, ScorelineError] = {}
        fresh_rows = {}
        if miss:
            wanted = np.asarray(miss)
            table, found, part_errors = lookup_rows(self.store, values[wanted] if self._is_int
                                                    else pa.array([values[i].decode() for i in miss]),
                                                    list(cols))
            rows = table.to_pylist()
            with self._lock:
                for j, i in enumerate(miss):
                    entry = (now + self.ttl, tuple(rows[j][c] for c in cols) if found[j] else None)
                    if j in part_errors:
                        errors[i] = part_errors[j]
                    else:
                        self._entries[(cols, values[i].item())] = entry
                        self._entries.move_to_end((cols, values[i].item()))
                    fresh_rows[i] = entry
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        found = np.zeros(n, dtype=bool)
        out = [[None] * n for _ in cols]
        for i in range(n):
            entry = cached[i] if cached[i] is not None else fresh_rows.get(i)
            if entry is None or entry[1] is None:
                continue
            found[i] = True
            for j, v in enumerate(entry[1]):
                out[j][i] = v
        arrays = [pa.array(out[j], self.schema.field(c).type) for j, c in enumerate(cols)]
        return pa.Table.from_arrays(arrays, schema=pa.schema([self.schema.field(c) for c in cols])), \
            found, errors

    def clear(self) -> None:
        """Forget every cached entity."""
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        self.store.close()


class JoinedStore(EntityStore):
    """Columns from several stores by the same key (see the module docstring)."""

    def __init__(self, stores: list[EntityStore], *, found: str = "first") -> None:
        if not stores:
            raise SchemaError("a join needs at least one store", path="$.entity.store.stores")
        self.stores = stores
        self.found_rule = found
        self.key_column = stores[0].key_column
        self._owner: dict[str, int] = {}
        fields = [stores[0].schema.field(self.key_column)]
        for s, store in enumerate(stores):
            for field in store.schema:
                if field.name != store.key_column and field.name not in self._owner \
                        and field.name != self.key_column:
                    self._owner[field.name] = s
                    fields.append(field)
        self.schema = pa.schema(fields)

    def __repr__(self) -> str:
        return f"JoinedStore({', '.join(map(repr, self.stores))})"

    def lookup(self, keys, columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        table, found, _ = self.lookup_rows(keys, columns)
        return table, found

    def lookup_rows(self, keys, columns: Sequence[str] | None = None):
        cols = self._columns(columns)
        n = len(keys)
        found = None
        errors: dict[int, ScorelineError] = {}
        parts: dict[str, pa.ChunkedArray] = {}
        for s, store in enumerate(self.stores):
            mine = [c for c in cols if self._owner[c] == s]
            if not mine and s > 0:
                continue
            table, hit, part_errors = lookup_rows(store, keys, mine)
            hit = np.asarray(hit, dtype=bool)
            if found is None:
                found = hit.copy()
            elif self.found_rule == "all":
                found &= hit
            for i, e in part_errors.items():
                errors.setdefault(i, e)
            for c in mine:
                parts[c] = table.column(c)
        if found is None:
            found = np.zeros(n, dtype=bool)
        return pa.table({c: parts[c] for c in cols}), found, errors

    def close(self) -> None:
        for store in self.stores:
            store.close()
