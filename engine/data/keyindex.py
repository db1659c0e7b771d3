"""The key index of an entity store: finds a batch of keys at once (a direct offset table for
dense integer keys, else sorted keys and ``searchsorted``), plus the key coercion and the row
gather that stores share.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from scoreline.errors import InputError, SchemaError

__all__ = ["KeyIndex", "coerce_keys", "python_keys", "take_rows"]

# A direct key -> row table is used when the key range is at most this many times the key count
# (memory: 8 bytes per slot, so at most ~32 MB per million keys).
_DENSE_FACTOR = 4


class KeyIndex:
    """Finds a batch of keys at once, without a Python loop.

    Integer keys spanning a range at most ``_DENSE_FACTOR`` times their count (customer ids
    usually do) get a direct table, range offset -> row, and a lookup is one gather. Other keys
    are sorted with their row numbers and found with ``searchsorted``; string keys as fixed-width
    UTF-8 bytes (numpy "S"), compared with memcmp: 10,000 keys in 1M take ~2 ms, against ~40 ms
    as Python str objects. (UTF-8 byte order is code point order, so sorting is unchanged; "S"
    drops trailing NUL bytes, so keys ending in "\\0" are not supported.)
    """

    def __init__(self, column: pa.Array | pa.ChunkedArray, what: str) -> None:
        self.is_int = pa.types.is_integer(column.type)
        if not self.is_int and not (pa.types.is_string(column.type)
                                    or pa.types.is_large_string(column.type)):
            raise SchemaError(f"{what}: key column has type {column.type}; expected integers or "
                              "strings", path="$.entity.store.key-column")
        if column.null_count:
            raise InputError(f"{what}: the key column has {column.null_count} null keys",
                             path="$.entity.store.key-column")
        values = (column.cast(pa.int64()).to_numpy() if self.is_int
                  else _utf8(column))
        order = np.argsort(values, kind="stable")
        self.sorted = values[order]
        self.rows = order
        dup = np.flatnonzero(self.sorted[1:] == self.sorted[:-1])
        if dup.size:
            key = self.sorted[dup[0]]
            key = int(key) if self.is_int else key
            raise InputError(f"{what}: key {key!r} appears more than once (keys must be unique)",
                             path="$.entity.store.key-column")
        self.direct = None
        n = len(values)
        if self.is_int and n:
            low, high = int(self.sorted[0]), int(self.sorted[-1])
            if high - low < _DENSE_FACTOR * n + 1024:
                self.low = low
                self.direct = np.full(high - low + 1, -1, np.int64)
                self.direct[self.sorted - low] = order

    def find(self, keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, found) for ``keys``; invalid keys are not found."""
        if not self.is_int and keys.dtype.itemsize > self.sorted.dtype.itemsize:
            # longer than every stored key: cannot match, and must not match once truncated
            valid = valid & (np.char.str_len(keys) <= self.sorted.dtype.itemsize)
            keys = keys.astype(self.sorted.dtype)
        if len(keys) == 1:
            return self._find_one(keys[0], bool(valid[0]))
        if self.direct is not None:
            offset = keys - self.low
            inside = (offset >= 0) & (offset < len(self.direct))
            rows = self.direct[np.where(inside, offset, 0)]
            found = valid & inside & (rows >= 0)
            return np.where(found, rows, 0), found
        n = len(self.sorted)
        if n == 0:
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        if len(keys) > 64:
            # Sorted needles walk the index in order: about 7x faster for 10,000 random keys in
            # 1M (measured: 0.7 ms against 5 ms), far more than the argsort costs.
            order = np.argsort(keys, kind="stable")
            pos = np.empty(len(keys), np.int64)
            pos[order] = np.searchsorted(self.sorted, keys[order])
        else:
            pos = np.searchsorted(self.sorted, keys)
        pos[pos >= n] = n - 1
        found = valid & (self.sorted[pos] == keys)
        return self.rows[pos], found

    def find_one(self, key) -> int:
        """The row of one key (an int for an integer index), or -1: scalar arithmetic, a few µs
        cheaper than `find` for a single request."""
        if self.direct is not None:
            offset = int(key) - self.low
            if 0 <= offset < len(self.direct):
                return int(self.direct[offset])
            return -1
        if len(self.sorted):
            pos = int(np.searchsorted(self.sorted, key))
            if pos < len(self.sorted) and self.sorted[pos] == key:
                return int(self.rows[pos])
        return -1

    def _find_one(self, key, valid: bool) -> tuple[np.ndarray, np.ndarray]:
        row = self.find_one(key) if valid else -1
        return np.array([max(row, 0)], np.int64), np.array([row >= 0])


def coerce_keys(keys, is_int: bool) -> tuple[np.ndarray, np.ndarray]:
    """The keys as int64 or UTF-8 bytes, and which of them are valid keys at all."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu" and is_int:
        return keys.astype(np.int64, copy=False), np.ones(len(keys), bool)
    if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = pa.array(keys.tolist() if isinstance(keys, np.ndarray) else list(keys))
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    valid = ~np.asarray(keys.is_null().to_numpy(zero_copy_only=False), bool) if keys.null_count \
        else np.ones(len(keys), bool)
    if len(keys) == 1 and not is_int:
        return _coerce_each(keys.to_pylist(), is_int)   # one request: skip the array conversions
    target = pa.int64() if is_int else pa.string()
    if not keys.type.equals(target):
        try:
            keys = keys.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # some keys are not keys of this type ("abc", 1.5): those are simply not found
            return _coerce_each(keys.to_pylist(), is_int)
    if keys.null_count:
        keys = keys.fill_null(0 if is_int else "")
    if is_int:
        return keys.to_numpy(), valid
    return _utf8(keys), valid


def _coerce_each(items: list, is_int: bool) -> tuple[np.ndarray, np.ndarray]:
    out, valid = [], []
    for v in items:
        k = None
        if is_int:
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                k = int(v)
            elif isinstance(v, float) and v.is_integer():
                k = int(v)
            elif isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
                k = int(v)
        elif v is not None:
            k = str(v)
        valid.append(k is not None)
        out.append(k if k is not None else (0 if is_int else ""))
    if is_int:
        return np.array(out, dtype=np.int64), np.array(valid, bool)
    return np.array([k.encode() for k in out], dtype="S"), np.array(valid, bool)


def python_keys(keys: np.ndarray) -> list:
    """Keys as Python ints or strs, to bind as query parameters."""
    return keys.tolist() if keys.dtype.kind in "iu" else [k.decode() for k in keys.tolist()]


def _utf8(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Strings as a fixed-width numpy bytes array (their UTF-8 encoding)."""
    values = strings.cast(pa.binary()).to_numpy(zero_copy_only=False)
    return np.array(values, dtype="S") if len(values) else np.array([], dtype="S1")


def take_rows(table: pa.Table, rows: np.ndarray, found: np.ndarray) -> pa.Table:
    if len(rows) == 1 and found[0]:
        # one entity (a single request): a zero-copy slice costs a few µs less than a take
        return table.slice(int(rows[0]), 1)
    # A null index gives a null row: that is what an unknown key returns.
    indices = pa.array(rows, mask=~found) if not found.all() else pa.array(rows)
    return table.take(indices)
