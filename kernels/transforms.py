"""Feature transform kernels: float64 columns in, float64 columns out; NaN is missing throughout.

Every kernel writes into a caller-owned `out` array (no allocation on the hot path) and treats a
NaN input as missing. Dates are whole days since 1970-01-01 stored as float64 (exact up to 2**53
days), so dates, numbers and category codes share one float64 work matrix and a missing date is
NaN like any other missing value. Category codes come from the engine (pyarrow.compute.index_in
once per batch): `code >= 0` is the position in the key list, `-1` an unseen value, NaN a null.

`run_plan` interprets a deployment's compiled transform program (an int64 op table plus a float64
parameter vector) over the work matrix in a single call, so a one-row request pays one Numba
dispatch for all its transforms rather than one per transform.
"""

from __future__ import annotations

import numpy as np

from .policy import jit

__all__ = [
    "OP_COPY", "OP_AGE_YEARS", "OP_DAYS_SINCE", "OP_GATHER", "OP_ONE_HOT", "OP_STANDARDIZE",
    "OP_MIN_MAX", "OP_LOG1P", "OP_CLIP", "OP_BUCKETIZE", "OP_FILL_MISSING", "OP_RATIO",
    "civil_from_days", "age_years", "days_since", "gather_codes", "one_hot", "standardize",
    "min_max", "log1p", "clip", "bucketize", "fill_missing", "ratio", "copy", "run_plan",
]



@jit
def civil_from_days(days):
    """(year, month, day) of a day number (days since 1970-01-01, proleptic Gregorian).

    Howard Hinnant's `civil_from_days`: exact for every int64 day, no tables, no branches on
    calendars. Integer `//` floors in Numba as in Python, which the negative-era step relies on.
    """
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


@jit
def age_years(days, today, out):
    """Whole years from each date in `days` to the day `today`: the years between the two
    calendar dates, less one if the anniversary has not come yet this year.

    A 29 February birthday comes on 1 March in common years (born 2000-02-29: 17 on 2018-02-28,
    18 on 2018-03-01), the rule of comparing (month, day) pairs. A date after `today` gives a
    negative age; the engine's input ranges reject it where that matters.
    """
    ty, tm, td = civil_from_days(np.int64(today))
    for i in range(days.shape[0]):
        d = days[i]
        if np.isnan(d):
            out[i] = np.nan
            continue
        by, bm, bd = civil_from_days(np.int64(d))
        age = ty - by
        if tm * 32 + td < bm * 32 + bd:
            age -= 1
        out[i] = age


@jit
def days_since(days, today, out):
    """`today - days` for each date: positive for dates in the past."""
    for i in range(days.shape[0]):
        out[i] = today - days[i]


@jit
def gather_codes(codes, table, unseen, out):
    """`table[code]` for each category code; an unseen value (-1) gives `unseen`, NaN gives NaN.

    Vocabulary codes are `table = arange(k)`; a lookup table is its values in key order.
    """
    for i in range(codes.shape[0]):
        c = codes[i]
        if np.isnan(c):
            out[i] = np.nan
        elif c < 0:
            out[i] = unseen
        else:
            out[i] = table[np.int64(c)]


@jit
def one_hot(codes, out):
    """One 0/1 column per category in `out[:, j]`; an unseen value (-1) gives all zeros and a
    missing one (NaN) all NaN, so a model still sees 'missing' rather than 'none of these'."""
    k = out.shape[1]
    for i in range(codes.shape[0]):
        c = codes[i]
        if np.isnan(c):
            for j in range(k):
                out[i, j] = np.nan
        else:
            for j in range(k):
                out[i, j] = 0.0
            if c >= 0:
                out[i, np.int64(c)] = 1.0


@jit
def standardize(x, mean, std, out):
    """`(x - mean) / std` (the engine refuses std == 0 when it compiles the plan)."""
    for i in range(x.shape[0]):
        out[i] = (x[i] - mean) / std


@jit
def min_max(x, lo, hi, out):
    """`(x - lo) / (hi - lo)`, not clipped: values outside [lo, hi] fall outside [0, 1]."""
    scale = hi - lo
    for i in range(x.shape[0]):
        out[i] = (x[i] - lo) / scale


@jit
def log1p(x, out):
    """`log(1 + x)` as the C library's log1p computes it (Python's math.log1p): -1 gives -inf
    and below -1 NaN, as numpy; numpy's own SIMD log1p can differ from it in the last bit, so
    training code should compute this feature with this kernel (engine/demo.py does)."""
    for i in range(x.shape[0]):
        v = x[i]
        if v < -1.0:
            out[i] = np.nan  # np.log1p's value, without its floating-point warning
        else:
            out[i] = np.log1p(v)


@jit
def clip(x, lo, hi, out):
    """`x` limited to [lo, hi] (pass -inf / inf for an open side); NaN stays NaN, as np.clip."""
    for i in range(x.shape[0]):
        v = x[i]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        out[i] = v


@jit
def bucketize(x, edges, out):
    """The number of `edges` <= x, i.e. `np.searchsorted(edges, x, side="right")` for ascending
    edges: below the first edge 0, on an edge the bucket it opens, from the last edge len(edges).
    NaN stays NaN (missing), where searchsorted would put it past the last edge."""
    for i in range(x.shape[0]):
        v = x[i]
        if np.isnan(v):
            out[i] = np.nan
            continue
        lo = 0
        hi = edges.shape[0]
        while lo < hi:  # first edge > v
            mid = (lo + hi) >> 1
            if edges[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


@jit
def fill_missing(x, value, out):
    """NaN becomes `value`; infinities are values, not missing, and stay."""
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = value if np.isnan(v) else v


@jit
def ratio(num, den, out):
    """`num / den`; a zero denominator gives NaN (missing) whatever the numerator."""
    for i in range(num.shape[0]):
        d = den[i]
        out[i] = np.nan if d == 0.0 else num[i] / d


@jit
def copy(x, out):
    """`out[:] = x` (passthrough, and a feature fed from a column that lives elsewhere)."""
    for i in range(x.shape[0]):
        out[i] = x[i]


# --- the plan interpreter ---------------------------------------------------------------------
# One row of `ops` per step: (opcode, source column, second source, destination column,
# parameter offset, parameter count). Columns index the work matrix; parameters index `params`.
OP_COPY = 0
OP_AGE_YEARS = 1
OP_DAYS_SINCE = 2
OP_GATHER = 3  # params: unseen value, then the table
OP_ONE_HOT = 4  # destination columns dst .. dst + count - 1
OP_STANDARDIZE = 5  # params: mean, std
OP_MIN_MAX = 6  # params: lo, hi
OP_LOG1P = 7
OP_CLIP = 8  # params: lo, hi
OP_BUCKETIZE = 9  # params: the edges
OP_FILL_MISSING = 10  # params: the value
OP_RATIO = 11


@jit
def run_plan(ops, params, today, work):
    """Run a transform program over `work` (rows x columns, any layout) for scoring day `today`."""
    for s in range(ops.shape[0]):
        op = ops[s, 0]
        a = work[:, ops[s, 1]]
        b = work[:, ops[s, 2]]
        dst = ops[s, 3]
        p0 = ops[s, 4]
        p1 = ops[s, 5]
        out = work[:, dst]
        if op == OP_COPY:
            copy(a, out)
        elif op == OP_AGE_YEARS:
            age_years(a, today, out)
        elif op == OP_DAYS_SINCE:
            days_since(a, today, out)
        elif op == OP_GATHER:
            gather_codes(a, params[p0 + 1:p0 + p1], params[p0], out)
        elif op == OP_ONE_HOT:
            one_hot(a, work[:, dst:dst + p1])
        elif op == OP_STANDARDIZE:
            standardize(a, params[p0], params[p0 + 1], out)
        elif op == OP_MIN_MAX:
            min_max(a, params[p0], params[p0 + 1], out)
        elif op == OP_LOG1P:
            log1p(a, out)
        elif op == OP_CLIP:
            clip(a, params[p0], params[p0 + 1], out)
        elif op == OP_BUCKETIZE:
            bucketize(a, params[p0:p0 + p1], out)
        elif op == OP_FILL_MISSING:
            fill_missing(a, params[p0], out)
        elif op == OP_RATIO:
            ratio(a, b, out)
