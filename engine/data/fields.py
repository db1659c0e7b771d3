"""Check raw input values against their manifest `Input` spec and turn them into work-matrix
numbers: whole Arrow columns (vectorized, one error per bad row) or one Python value (the
one-row path). Both paths accept and refuse the same values with the same messages.

Numbers are float64 with NaN for missing; dates and timestamps are whole days since 1970-01-01
(a timestamp is taken in UTC and floored to its day); strings stay strings (the plan maps them to
codes). A null takes the input's default; a null without one is an error for a required input and
missing (NaN) otherwise. NaN and infinities are refused unless the input sets `allow-nan`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.engine.data.days import EPOCH, EPOCH_DT, FIRST_DAY, day_bounds, plain_dates
from scoreline.errors import InputError, SchemaError
from scoreline.registry.manifest import Input

__all__ = ["check_column", "check_value", "check_default", "index_in", "input_path"]

_ARTICLE = {"int": "an int", "float": "a float", "string": "a string", "bool": "a bool",
            "date": "a date", "timestamp": "a timestamp"}


def input_path(spec: Input) -> str:
    return f"$.inputs.{spec.name}"


def _expected(spec: Input, got) -> InputError:
    what = _ARTICLE[spec.type]
    if spec.type == "date":
        what += " (YYYY-MM-DD)"
    return InputError(f"expected {what} at `{input_path(spec)}`, got {_show(got)}",
                      path=input_path(spec))


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return repr(value.isoformat())  # an Arrow date32 shows as the JSON string would
    if isinstance(value, float) and value.is_integer():
        return repr(int(value)) if abs(value) < 1e15 else repr(value)
    return repr(value)


def _missing(spec: Input) -> InputError:
    return InputError(f"missing required input `{input_path(spec)}` ({_ARTICLE[spec.type]})",
                      path=input_path(spec))


def _not_allowed(spec: Input, got) -> InputError:
    allowed = ", ".join(_show(a) for a in spec.allowed)
    return InputError(f"expected one of {allowed} at `{input_path(spec)}`, got {_show(got)}",
                      path=input_path(spec))


def _out_of_range(spec: Input, got) -> InputError:
    lo = "-inf" if spec.minimum is None else _show(spec.minimum)
    hi = "inf" if spec.maximum is None else _show(spec.maximum)
    return InputError(f"expected {_ARTICLE[spec.type]} between {lo} and {hi} at "
                      f"`{input_path(spec)}`, got {_show(got)}", path=input_path(spec))


def _out_of_days(spec: Input, got) -> InputError:
    lo = spec.earliest or "any day"
    hi = spec.latest or "any day"
    return InputError(f"expected {_ARTICLE[spec.type]} from {lo} to {hi} at `{input_path(spec)}`, "
                      f"got {_show(got)}", path=input_path(spec))


def _non_finite(spec: Input, got) -> InputError:
    return InputError(f"expected a finite number at `{input_path(spec)}`, got {_show(got)} "
                      "(the input does not set allow-nan)", path=input_path(spec))


# --- one Python value -------------------------------------------------------------------------


def check_value(spec: Input, value):
    """One value -> float (numbers, bools, days), str (strings) or None (missing).

    Raises InputError naming `$.inputs.<name>` for a value of the wrong type, outside the range,
    not among the allowed values, non-finite, or missing when required.
    """
    if value is None:
        if spec.default is not None:
            value = spec.default
        elif spec.required:
            raise _missing(spec)
        else:
            return None
    kind = spec.type
    if kind == "string":
        if type(value) is not str:
            raise _expected(spec, value)
        if spec.allowed is not None and value not in spec.allowed:
            raise _not_allowed(spec, value)
        return value
    if kind == "bool":
        if type(value) is not bool:
            raise _expected(spec, value)
        number = 1.0 if value else 0.0
    elif kind in ("int", "float"):
        if type(value) not in (int, float):  # bool is not a number here
            raise _expected(spec, value)
        number = float(value)
        if not math.isfinite(number):
            if not spec.allow_nan:
                raise _non_finite(spec, value)
            return number
        if kind == "int" and not number.is_integer():
            raise _expected(spec, value)
    else:
        number = _date_days(spec, value) if kind == "date" else _timestamp_days(spec, value)
        if spec.earliest is not None or spec.latest is not None:
            lo, hi = day_bounds(spec)
            if not lo <= number <= hi:
                raise _out_of_days(spec, value)
        return number
    if spec.allowed is not None and value not in spec.allowed:
        raise _not_allowed(spec, value)
    if kind in ("int", "float") and (
        (spec.minimum is not None and number < spec.minimum)
        or (spec.maximum is not None and number > spec.maximum)
    ):
        raise _out_of_range(spec, value)
    return number


def _date_days(spec: Input, value) -> float:
    if type(value) is str:
        # Strictly YYYY-MM-DD, as the Arrow path's strptime + round trip accepts.
        if len(value) != 10 or value[4] != "-" or value[7] != "-" or not (
            value[:4].isdigit() and value[5:7].isdigit() and value[8:].isdigit()
        ):
            raise _expected(spec, value)
        try:
            value = dt.date(int(value[:4]), int(value[5:7]), int(value[8:]))
        except ValueError:
            raise _expected(spec, value) from None
    if isinstance(value, dt.datetime):
        return _timestamp_days(spec, value)
    if isinstance(value, dt.date):
        return float((value - EPOCH).days)
    raise _expected(spec, value)


def _timestamp_days(spec: Input, value) -> float:
    if type(value) is str:
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _expected(spec, value) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float((value - EPOCH_DT) // dt.timedelta(days=1))
    if isinstance(value, dt.date):
        return float((value - EPOCH).days)
    raise _expected(spec, value)


def check_default(spec: Input, path: str) -> None:
    """Refuse (SchemaError at `path`) a default that the input itself would refuse."""
    if spec.default is None:
        return
    try:
        check_value(spec, spec.default)
    except InputError as exc:
        raise SchemaError(f"the default of input {spec.name!r} is invalid: {exc.message}",
                          path=path) from None


# --- a whole Arrow column ---------------------------------------------------------------------


def check_column(spec: Input, arr: pa.Array, errors: dict[int, InputError], *,
                 want_keys: bool = True, missing: dict[int, InputError] | None = None):
    """An Arrow column -> (float64 numbers or None, string keys as an Arrow array or None).

    Numbers: float64 (n,), NaN where missing or bad. Keys (string, int and bool inputs): the value
    as a string for vocabulary/lookup codes, null where missing or bad. Bad rows are added to
    `errors` (row -> InputError) unless the row already has an error. `want_keys=False` skips
    the keys of int inputs (a cast to strings per call) when no code reads them. `missing`: where
    a missing required value's error goes instead (a caller that reports a row's bad values
    before its missing ones, as the pipeline's fill does, merges them last).
    """
    numbers, keys = _check_column(spec, arr, errors, want_keys, missing)
    if spec.default is None or not arr.null_count:
        return numbers, keys
    # A null takes the default, converted once by the one-value path (which also checked it).
    null = arr.is_null().to_numpy(zero_copy_only=False)
    value = check_value(spec, spec.default)
    if numbers is not None:
        numbers[null] = value
    if keys is not None:
        key = value if spec.type == "string" else (
            ("true" if value else "false") if spec.type == "bool" else str(int(value)))
        keys = pc.if_else(pa.array(null), pa.scalar(key, pa.string()), keys)
    return numbers, keys


def _check_column(spec: Input, arr: pa.Array, errors: dict[int, InputError], want_keys: bool,
                  missing: dict[int, InputError] | None):
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    kind = spec.type
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    bad = np.zeros(n, dtype=bool)

    def report(mask: np.ndarray, make, into: dict = errors) -> None:
        if not mask.any():  # the usual case, and cheaper than flatnonzero
            return
        rows = np.flatnonzero(mask & ~bad)
        if len(rows):
            values = arr.take(pa.array(rows)).to_pylist()
            for row, value in zip(rows.tolist(), values):
                into.setdefault(row, make(value))
            bad[rows] = True

    if null is not None and spec.required and spec.default is None:
        report(null, lambda _v: _missing(spec), errors if missing is None else missing)

    keys = None
    if pa.types.is_null(arr.type):
        numbers = np.full(n, np.nan)
        keys = pa.nulls(n, pa.string()) if kind in ("string", "int", "bool") else None
        return (None if kind == "string" else numbers), keys

    if kind == "string":
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
                or pa.types.is_string_view(arr.type)):
            report(_present(null, n), lambda v: _expected(spec, v))
            return None, pa.nulls(n, pa.string())
        keys = arr if pa.types.is_string(arr.type) else arr.cast(pa.string())
        if spec.allowed is not None:
            # Only strings can match (as in check_value), so a mixed list cannot fail the lookup.
            hit = index_in(keys, tuple(a for a in spec.allowed if type(a) is str)) >= 0
            report(~hit & _present(null, n), lambda v: _not_allowed(spec, v))
        return None, _blank(keys, bad)

    if kind in ("int", "float"):
        t = arr.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            report(_present(null, n), lambda v: _expected(spec, v))
            return np.full(n, np.nan), pa.nulls(n, pa.string())
        numbers = _floats(arr)
        present = _present(null, n)
        with np.errstate(invalid="ignore"):
            if not spec.allow_nan:
                report(~np.isfinite(numbers) & present, lambda v: _non_finite(spec, v))
            if kind == "int" and pa.types.is_floating(t):
                report((numbers != np.floor(numbers)) & np.isfinite(numbers) & present,
                       lambda v: _expected(spec, v))
            if spec.minimum is not None or spec.maximum is not None:
                lo = -np.inf if spec.minimum is None else spec.minimum
                hi = np.inf if spec.maximum is None else spec.maximum
                report(((numbers < lo) | (numbers > hi)) & present, lambda v: _out_of_range(spec, v))
        if spec.allowed is not None:
            ok = np.isin(numbers, np.array([float(a) for a in spec.allowed
                                            if type(a) in (int, float)]))
            report(~ok & present & np.isfinite(numbers), lambda v: _not_allowed(spec, v))
        if kind == "int" and want_keys:
            keys = pc.cast(arr, pa.int64(), safe=False).cast(pa.string()) \
                if not pa.types.is_integer(t) else arr.cast(pa.string())
    elif kind == "bool":
        if not pa.types.is_boolean(arr.type):
            report(_present(null, n), lambda v: _expected(spec, v))
            return np.full(n, np.nan), pa.nulls(n, pa.string())
        numbers = arr.cast(pa.float64()).to_numpy(zero_copy_only=False).copy()
        if spec.allowed is not None:
            ok = np.isin(numbers, np.array([float(a) for a in spec.allowed if type(a) is bool]))
            report(~ok & _present(null, n), lambda v: _not_allowed(spec, v))
        keys = arr.cast(pa.string())
    else:
        numbers = _days(spec, arr, null, report)
        if spec.earliest is not None or spec.latest is not None:
            lo, hi = day_bounds(spec)
            with np.errstate(invalid="ignore"):
                outside = (numbers < lo) | (numbers > hi)
            report(outside & _present(null, n), lambda v: _out_of_days(spec, v))
    numbers[bad] = np.nan
    return numbers, (None if keys is None else _blank(keys, bad))


def _days(spec: Input, arr: pa.Array, null, report) -> np.ndarray:
    """Whole days since the epoch for a date or timestamp column (string, date or timestamp)."""
    n = len(arr)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if not pa.types.is_string(t):
            arr = arr.cast(pa.string())
        if spec.type == "date":
            days = plain_dates(arr)
            if days is not None:
                return days
            parsed = pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True)
            # strptime rolls 2020-02-30 over to March and takes 1966-12-8: a round trip refuses both.
            same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), arr).fill_null(False)
            days = pc.cast(pc.cast(parsed, pa.date32()), pa.int32())
            out = days.to_numpy(zero_copy_only=False).astype(np.float64)
            # ... and year 0, which Python's calendar (the one-row path) does not have.
            with np.errstate(invalid="ignore"):
                same = same.to_numpy(zero_copy_only=False) & (out >= FIRST_DAY)
            report(~same & _present(null, n), lambda v: _expected(spec, v))
            return out
        # ISO 8601 timestamps come in too many shapes for one format: parse like the one-row path.
        out = np.full(n, np.nan)
        values = arr.to_pylist()
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                out[i] = _timestamp_days(spec, v)
            except InputError:
                mask = np.zeros(n, dtype=bool)
                mask[i] = True
                report(mask, lambda v: _expected(spec, v))
        return out
    if pa.types.is_date32(t):
        # A date32 is its day number: read it as int32 (nulls arrive as NaN), no cast.
        return arr.view(pa.int32()).to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_date(t):
        return pc.cast(arr.cast(pa.date32()), pa.int32()).to_numpy(zero_copy_only=False) \
            .astype(np.float64)
    if pa.types.is_timestamp(t):
        us = arr.cast(pa.timestamp("us", tz=t.tz)).cast(pa.int64())
        micros = us.to_numpy(zero_copy_only=False)
        return np.floor(micros / 86_400_000_000.0)
    report(_present(null, n), lambda v: _expected(spec, v))
    return np.full(n, np.nan)


# Up to this many rows, index_in looks strings up with numpy (~5 us for 64 rows) rather than
# pc.index_in + fill_null + to_numpy (~25 us whatever the size); past it Arrow's hash wins.
_SMALL = 512


def index_in(keys: pa.Array, key_list: tuple) -> np.ndarray:
    """The position of each utf8 key in `key_list` (the first, if it repeats) as int64; -1 where
    the key is absent or null."""
    n = len(keys)
    if not key_list:
        return np.full(n, -1, dtype=np.int64)
    if n <= _SMALL and not keys.null_count:
        vocabulary, order = _sorted_keys(key_list)
        values = keys.to_numpy(zero_copy_only=False)  # str objects: compared exactly
        at = np.searchsorted(vocabulary, values)
        np.minimum(at, len(vocabulary) - 1, out=at)
        return np.where(vocabulary[at] == values, order[at], -1)
    index = pc.index_in(keys, value_set=pa.array(key_list, pa.string()))
    return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _sorted_keys(key_list: tuple) -> tuple[np.ndarray, np.ndarray]:
    """`key_list` sorted (an object array) and each sorted key's position in `key_list`; a
    stable sort, so a repeated key finds its first position, as pc.index_in does."""
    order = np.array(sorted(range(len(key_list)), key=key_list.__getitem__), dtype=np.int64)
    return np.array([key_list[i] for i in order], dtype=object), order


# int64 magnitudes float64 holds exactly; Arrow's safe cast raises beyond them, so larger
# values take that cast (and its error) as before.
_EXACT_INT = 2 ** 53


def _floats(arr: pa.Array) -> np.ndarray:
    """A writable float64 copy of a numeric column, NaN for nulls: numpy's conversion where it
    equals Arrow's cast (~2 us against ~10 us for the cast plus to_numpy)."""
    t = arr.type
    if pa.types.is_floating(t) or (pa.types.is_integer(t) and not arr.null_count):
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype.kind in "iu" and len(values) and (
                values.max() > _EXACT_INT or (values.dtype.kind == "i" and values.min() < -_EXACT_INT)):
            return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).copy()
        return values.astype(np.float64)
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).copy()


def _present(null, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if null is None else ~null


def _blank(keys: pa.Array, bad: np.ndarray) -> pa.Array:
    """`keys` with the bad rows set to null (they are not scored, but must not raise later)."""
    if not bad.any():
        return keys
    return pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), keys)
