"""Transform kernels against a pure-numpy reference on random data, NaN and infinities included."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scoreline.kernels import transforms as T

EPOCH = dt.date(1970, 1, 1)

values = arrays(
    np.float64,
    st.integers(0, 40),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
finite = st.floats(-1e6, 1e6, allow_nan=False)
day_numbers = arrays(
    np.float64,
    st.integers(0, 40),
    elements=st.one_of(st.integers(-300_000, 300_000).map(float), st.just(np.nan)),
)


def day(d: dt.date) -> int:
    return (d - EPOCH).days


# --- the numpy reference ----------------------------------------------------------------------


def ref_civil(days: np.ndarray):
    d = days.astype("datetime64[D]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (d - d.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, dom


def ref_age(days: np.ndarray, today: int) -> np.ndarray:
    out = np.full(days.shape, np.nan)
    ok = ~np.isnan(days)
    by, bm, bd = ref_civil(days[ok].astype(np.int64))
    ty, tm, td = ref_civil(np.array([today]))
    before = (tm * 100 + td) < (bm * 100 + bd)
    out[ok] = ty - by - before
    return out


def ref_gather(codes, table, unseen):
    safe = np.where(np.isnan(codes) | (codes < 0), 0, codes).astype(np.int64)
    taken = np.asarray(table, dtype=np.float64)[safe] if len(table) else np.zeros(codes.shape)
    return np.where(np.isnan(codes), np.nan, np.where(codes < 0, unseen, taken))


def ref_one_hot(codes, k):
    out = (codes[:, None] == np.arange(k)[None, :]).astype(np.float64)
    out[np.isnan(codes)] = np.nan
    return out


def ref_bucketize(x, edges):
    return np.where(np.isnan(x), np.nan, np.searchsorted(edges, x, side="right").astype(float))


def ref_log1p(x):
    """The C library's log1p (Python's math.log1p), which the kernel calls. numpy's own log1p
    may be a SIMD version that differs in the last bit, so it is compared with a tolerance."""
    out = np.full(x.shape, np.nan)
    for i, v in enumerate(x.tolist()):
        if v > -1:
            out[i] = math.log1p(v)
        elif v == -1:
            out[i] = -np.inf
    return out


def ref_ratio(num, den):
    with np.errstate(all="ignore"):
        return np.where(den == 0, np.nan, num / den)


def run(kernel, *args):
    out = np.empty(len(args[0]))
    kernel(*args, out)
    return out


# --- each kernel ------------------------------------------------------------------------------


@given(day_numbers, st.integers(-300_000, 300_000))
def test_age_years_matches_reference(days, today):
    np.testing.assert_array_equal(run(T.age_years, days, today), ref_age(days, today))


@given(st.integers(-1_000_000, 1_000_000))
def test_civil_from_days_matches_numpy_calendar(n):
    y, m, d = ref_civil(np.array([n]))
    assert T.civil_from_days(n) == (y[0], m[0], d[0])


@pytest.mark.parametrize(
    "born, on, age",
    [
        (dt.date(2000, 2, 29), dt.date(2018, 2, 28), 17),  # leap-day birthday not yet reached
        (dt.date(2000, 2, 29), dt.date(2018, 3, 1), 18),
        (dt.date(2000, 2, 29), dt.date(2020, 2, 28), 19),
        (dt.date(2000, 2, 29), dt.date(2020, 2, 29), 20),
        (dt.date(1966, 12, 8), dt.date(2026, 12, 7), 59),
        (dt.date(1966, 12, 8), dt.date(2026, 12, 8), 60),
        (dt.date(1900, 1, 1), dt.date(1969, 12, 31), 69),  # before the epoch
        (dt.date(2030, 1, 1), dt.date(2026, 1, 1), -4),
    ],
)
def test_age_years_on_birthdays(born, on, age):
    assert run(T.age_years, np.array([float(day(born))]), day(on))[0] == age


@given(day_numbers, st.integers(-300_000, 300_000))
def test_days_since_matches_reference(days, today):
    np.testing.assert_array_equal(run(T.days_since, days, today), today - days)


codes = arrays(
    np.float64,
    st.integers(0, 40),
    elements=st.one_of(st.integers(-1, 5).map(float), st.just(np.nan)),
)


@given(codes, st.one_of(finite, st.just(np.nan)))
def test_gather_codes_matches_reference(c, unseen):
    table = np.array([0.5, -2.0, 3.0, np.inf, 7.0, 11.0])
    np.testing.assert_array_equal(run(T.gather_codes, c, table, unseen), ref_gather(c, table, unseen))


@given(codes)
def test_one_hot_matches_reference(c):
    out = np.empty((len(c), 6), order="F")
    T.one_hot(c, out)
    np.testing.assert_array_equal(out, ref_one_hot(c, 6))


@given(values, finite, st.floats(0.001, 1e3))
def test_standardize_matches_reference(x, mean, std):
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(run(T.standardize, x, mean, std), (x - mean) / std, rtol=1e-15)


@given(values, finite, st.floats(0.001, 1e3))
def test_min_max_matches_reference(x, lo, width):
    hi = lo + width
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(run(T.min_max, x, lo, hi), (x - lo) / (hi - lo), rtol=1e-15)


@given(values)
def test_log1p_matches_reference(x):
    got = run(T.log1p, x)
    np.testing.assert_array_equal(got, ref_log1p(x))
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got, np.log1p(x), rtol=1e-15)


@given(values, st.one_of(finite, st.just(-np.inf)), st.one_of(finite, st.just(np.inf)))
def test_clip_matches_reference(x, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    np.testing.assert_array_equal(run(T.clip, x, lo, hi), np.clip(x, lo, hi))


@given(values, st.lists(finite, max_size=8).map(sorted))
def test_bucketize_matches_searchsorted(x, edges):
    e = np.array(edges, dtype=np.float64)
    np.testing.assert_array_equal(run(T.bucketize, x, e), ref_bucketize(x, e))


def test_bucketize_edges_open_their_bucket():
    x = np.array([-np.inf, 0.0, 1.0, 1.5, 2.0, np.inf, np.nan])
    out = run(T.bucketize, x, np.array([1.0, 2.0]))
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 2, 2, np.nan])


@given(values, finite)
def test_fill_missing_matches_reference(x, value):
    np.testing.assert_array_equal(run(T.fill_missing, x, value), np.where(np.isnan(x), value, x))


@given(st.integers(0, 30).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(allow_nan=True, allow_infinity=True)),
    arrays(np.float64, n, elements=st.one_of(st.just(0.0), st.just(-0.0), st.floats())),
)))
def test_ratio_matches_reference(pair):
    num, den = pair
    np.testing.assert_array_equal(run(T.ratio, num, den), ref_ratio(num, den))


# --- the interpreter: a program equals the kernels applied in order ---------------------------


@given(
    st.integers(1, 20).flatmap(lambda n: st.tuples(
        arrays(np.float64, n, elements=st.floats(allow_nan=True, allow_infinity=True)),
        arrays(np.float64, n, elements=st.floats(-1e5, 1e5) | st.just(np.nan)),
        arrays(np.float64, n, elements=st.one_of(st.integers(-1, 2).map(float), st.just(np.nan))),
    )),
    st.integers(-50_000, 50_000),
)
def test_run_plan_matches_each_reference(cols, today):
    x, d, c = cols
    n = len(x)
    days = np.floor(d)
    work = np.zeros((n, 20), order="F")
    work[:, 0], work[:, 1], work[:, 2] = x, days, c
    p = np.array([-1.0, 10.0, 20.0, 30.0, 2.0, 4.0, 0.0, 1.0, -5.0, 5.0, 9.0])
    ops = np.array(
        [
            [T.OP_COPY, 0, 0, 3, 0, 0],
            [T.OP_AGE_YEARS, 1, 0, 4, 0, 0],
            [T.OP_DAYS_SINCE, 1, 0, 5, 0, 0],
            [T.OP_GATHER, 2, 0, 6, 0, 4],  # unseen -1, table [10, 20, 30]
            [T.OP_ONE_HOT, 2, 0, 7, 0, 3],  # columns 7, 8, 9
            [T.OP_STANDARDIZE, 0, 0, 10, 4, 2],
            [T.OP_MIN_MAX, 0, 0, 11, 6, 2],
            [T.OP_LOG1P, 0, 0, 12, 0, 0],
            [T.OP_CLIP, 0, 0, 13, 8, 2],
            [T.OP_BUCKETIZE, 0, 0, 14, 6, 2],
            [T.OP_FILL_MISSING, 0, 0, 15, 10, 1],
            [T.OP_RATIO, 0, 1, 16, 0, 0],
        ],
        dtype=np.int64,
    )
    T.run_plan(ops, p, today, work)
    with np.errstate(all="ignore"):
        expected = {
            3: x,
            4: ref_age(days, today),
            5: today - days,
            6: ref_gather(c, [10.0, 20.0, 30.0], -1.0),
            10: (x - 2.0) / 4.0,
            11: x,
            12: ref_log1p(x),
            13: np.clip(x, -5.0, 5.0),
            14: ref_bucketize(x, np.array([0.0, 1.0])),
            15: np.where(np.isnan(x), 9.0, x),
            16: ref_ratio(x, days),
        }
    for column, want in expected.items():
        np.testing.assert_array_equal(work[:, column], want, err_msg=f"column {column}")
    np.testing.assert_array_equal(work[:, 7:10], ref_one_hot(c, 3))
