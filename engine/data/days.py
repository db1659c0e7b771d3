"""Day numbers: whole days since 1970-01-01 for ISO dates, read a column at a time straight from
Arrow's buffers, and the `earliest`/`latest` bounds a manifest can put on a date input.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time

import numpy as np
import pyarrow as pa

from scoreline.errors import SchemaError
from scoreline.registry.manifest import Input

__all__ = ["EPOCH", "EPOCH_DT", "FIRST_DAY", "day_bounds", "plain_dates"]

EPOCH = dt.date(1970, 1, 1)
EPOCH_DT = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
FIRST_DAY = (dt.date(1, 1, 1) - EPOCH).days


def day_bounds(spec: Input, path: str | None = None) -> tuple[float, float] | None:
    """The days (since 1970-01-01) a date or timestamp input's `earliest`/`latest` allow, or None
    without bounds; "today" is today in UTC. A bound that is not a YYYY-MM-DD day is a
    SchemaError at `path` (the manifest's input; `$.inputs.<name>` by default)."""
    if spec.earliest is None and spec.latest is None:
        return None
    bounds = _fixed_bounds(spec.earliest, spec.latest)
    if type(bounds) is str:
        where = path or f"$.inputs.{spec.name}"
        field = "earliest" if bounds == "earliest" else "latest"
        raise SchemaError(f"input {spec.name!r}: expected a day (YYYY-MM-DD) for {field}, got "
                          f"{getattr(spec, field)!r}", path=f"{where}.{field}")
    lo, hi, hi_today = bounds
    if hi_today:
        hi = float(time.time() // 86400)
    if lo > hi:
        raise SchemaError(f"input {spec.name!r}: earliest {spec.earliest} is after latest "
                          f"{spec.latest}", path=f"{path or '$.inputs.' + spec.name}.earliest")
    return lo, hi


@functools.lru_cache(maxsize=256)
def _fixed_bounds(earliest, latest) -> tuple[float, float, bool] | str:
    """(first day, last day, whether the last is today) or the name of the bound that is not a
    day. Cached: the one-value path asks on every value."""
    def day(text) -> float | None:
        if type(text) is not str or len(text) != 10:
            return None
        try:
            return float((dt.date.fromisoformat(text) - EPOCH).days)
        except ValueError:
            return None

    lo = -math.inf if earliest is None else day(earliest)
    if lo is None:
        return "earliest"
    if latest == "today":
        return lo, math.inf, True
    hi = math.inf if latest is None else day(latest)
    return "latest" if hi is None else (lo, hi, False)


# Days in each month, for the plain YYYY-MM-DD check (February gets its leap day below).
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_DIGIT_AT = np.array([0, 1, 2, 3, 5, 6, 8, 9])


def plain_dates(arr: pa.Array) -> np.ndarray | None:
    """Days since the epoch for a utf8 column of only valid YYYY-MM-DD dates in years 1000-9999
    (no nulls), read straight from the Arrow buffers with numpy; None when any value needs the
    full check (strptime + round trip) and its message. Six numpy steps instead of six Arrow
    compute calls: a 64-row column ~15 us against ~60 us."""
    n = len(arr)
    if n == 0 or arr.null_count:
        return None
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=n + 1, offset=arr.offset * 4)
    start = int(offsets[0])
    if int(offsets[-1]) - start != 10 * n or (np.diff(offsets) != 10).any():
        return None
    text = np.frombuffer(data_buffer, np.uint8, count=10 * n, offset=start).reshape(n, 10)
    digits = text[:, _DIGIT_AT].astype(np.int64) - 48
    if (digits < 0).any() or (digits > 9).any() or (text[:, 4] != 45).any() \
            or (text[:, 7] != 45).any():
        return None
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month = digits[:, 4] * 10 + digits[:, 5]
    day = digits[:, 6] * 10 + digits[:, 7]
    if (year < 1000).any() or (month < 1).any() or (month > 12).any() or (day < 1).any():
        return None
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    if (day > _MONTH_DAYS[month] + (leap & (month == 2))).any():
        return None
    # Days from the civil date (H. Hinnant's days_from_civil; years here are positive).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468).astype(np.float64)
