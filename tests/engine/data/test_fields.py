"""Input checks: the Arrow column path and the one-value path accept and refuse the same values,
with the same numbers and the same messages (Hypothesis over mixed JSON-like values)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from scoreline.engine.data.days import day_bounds
from scoreline.engine.data.fields import check_column, check_value, index_in
from scoreline.errors import InputError, SchemaError
from scoreline.registry.manifest import Input

SPECS = [
    Input(name="i", type="int", minimum=-5, maximum=1e6),
    Input(name="f", type="float", required=False),
    Input(name="fn", type="float", allow_nan=True),
    Input(name="fa", type="float", allowed=[1.5, 2, 7]),
    Input(name="s", type="string", allowed=["NSW", "VIC"]),
    Input(name="s2", type="string", default="x"),
    Input(name="b", type="bool", required=False),
    Input(name="d", type="date"),
    Input(name="t", type="timestamp"),
    Input(name="id", type="int", default=3),
    Input(name="db", type="date", earliest="1900-01-01", latest="today"),
    Input(name="tb", type="timestamp", earliest="2000-01-01", latest="2030-12-31"),
]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NSW", "VIC", "XX", "", "1200", "1966-12-08", "2020-02-29", "2021-02-29",
                     "1966-12-8", "0000-01-01", "9999-12-31", "2024-01-01T10:00:00",
                     "2024-01-01 10:00:00+02:00", "yesterday"]),
    st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(lambda d: d.isoformat()),
    st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1)),
)


def one(spec, value):
    try:
        return ("ok", check_value(spec, value))
    except InputError as exc:
        return ("error", exc.message)


def column(spec, value):
    errors = {}
    arr = pa.array([value])
    numbers, keys = check_column(spec, arr, errors)
    if errors:
        return ("error", errors[0].message)
    if spec.type == "string":
        return ("ok", keys[0].as_py())
    number = numbers[0]
    return ("ok", None if math.isnan(number) and value is None and spec.default is None else number)


@settings(max_examples=400)  # cheap: no kernels, and rare spellings need the examples
@given(st.sampled_from(SPECS), values)
def test_both_paths_agree(spec, value):
    a, b = one(spec, value), column(spec, value)
    if a[0] == "ok" and b[0] == "ok" and isinstance(a[1], float) and isinstance(b[1], float):
        assert (a[1] == b[1]) or (math.isnan(a[1]) and math.isnan(b[1])), (a, b)
    else:
        assert a == b


def test_messages_name_the_field_and_the_value():
    assert one(SPECS[7], "yesterday") == (
        "error", "expected a date (YYYY-MM-DD) at `$.inputs.d`, got 'yesterday'")
    assert one(SPECS[0], 1e7) == (
        "error", "expected an int between -5 and 1000000 at `$.inputs.i`, got 10000000")
    assert one(SPECS[4], "XX") == ("error", "expected one of 'NSW', 'VIC' at `$.inputs.s`, got 'XX'")
    assert one(SPECS[1], None) == ("ok", None)
    assert one(SPECS[9], None) == ("ok", 3.0)
    assert one(SPECS[2], math.nan)[1] != one(SPECS[2], math.nan)[1]  # NaN passes with allow-nan
    assert one(SPECS[8], "2024-01-01T23:59:59-02:00") == ("ok", float(
        (dt.date(2024, 1, 2) - dt.date(1970, 1, 1)).days))


def test_a_column_with_many_rows_reports_each_bad_row():
    errors = {}
    arr = pa.array(["1966-12-08", None, "1966-13-01", "2000-02-29"])
    numbers, _ = check_column(SPECS[7], arr, errors)
    assert sorted(errors) == [1, 2]
    assert errors[1].message == "missing required input `$.inputs.d` (a date)"
    np.testing.assert_array_equal(numbers[[0, 3]], [-1120.0, 11016.0])


@settings(max_examples=60)
@given(st.lists(st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)), min_size=1, max_size=40),
       st.integers(0, 3), st.sampled_from([pa.string(), pa.large_string()]))
def test_a_column_of_dates_equals_the_one_value_path(dates, start, kind):
    """Many rows (sliced, so the Arrow offsets do not start at 0) of plain YYYY-MM-DD text take
    the column path's buffer parse; years before 1000 and any odd row take the full check."""
    text = [d.isoformat() for d in dates]
    arr = pa.array(["2000-01-01"] * start + text, kind).slice(start)
    errors = {}
    numbers, _ = check_column(SPECS[7], arr, errors)
    expected = [one(SPECS[7], t) for t in text]
    assert not errors and all(status == "ok" for status, _ in expected)
    np.testing.assert_array_equal(numbers, [v for _, v in expected])


def test_int_columns_convert_as_the_one_value_path():
    values = [0, -5, 999_999, 2**53, -(2**53), 123_456_789]
    arr = pa.array(values, pa.int64())
    numbers, keys = check_column(Input(name="n", type="int"), arr, {})
    assert numbers.tolist() == [check_value(Input(name="n", type="int"), v) for v in values]
    assert keys.to_pylist() == [str(v) for v in values]
    numbers[0] = 1.0  # a private copy: never the Arrow buffer, which is read-only
    assert arr[0].as_py() == 0


words = st.sampled_from(["", "a", "b", "NSW", "VIC", "é", "a\x00", "zz"])


@settings(max_examples=100)
@given(st.lists(st.one_of(words, st.none()), max_size=20), st.lists(words, max_size=6),
       st.integers(0, 600))
def test_index_in_equals_arrows(keys, key_list, repeat):
    """Small null-free columns take the numpy lookup, the rest pc.index_in: both answer as
    pc.index_in does (first position of a repeated key, -1 for absent or null)."""
    arr = pa.array(keys * (1 + repeat // 20 if keys else 1), pa.string())
    expected = pc.index_in(arr, value_set=pa.array(key_list, pa.string())).fill_null(-1)
    assert index_in(arr, tuple(key_list)).tolist() == expected.to_pylist()


def test_one_date_rule_iso_days_only_on_both_paths():
    spec = SPECS[10]  # a date of birth: 1900-01-01 to today
    tomorrow = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)).isoformat()
    for text in ("19661208", "1966-W49-4", "1966-12-8", "1966-342", "1966-12-08T00:00", tomorrow,
                 "1899-12-31"):
        assert one(spec, text)[0] == "error", text
        assert one(spec, text) == column(spec, text), text
    assert one(spec, "1966-12-08") == column(spec, "1966-12-08") == (
        "ok", float((dt.date(1966, 12, 8) - dt.date(1970, 1, 1)).days))
    assert one(spec, tomorrow)[1] == (
        f"expected a date from 1900-01-01 to today at `$.inputs.db`, got {tomorrow!r}")
    # an Arrow date32 outside the bounds reads the same as the JSON string
    assert column(spec, dt.date(1800, 1, 1)) == one(spec, "1800-01-01")


def test_day_bounds_refuse_what_is_not_a_day():
    with pytest.raises(SchemaError) as err:
        day_bounds(Input(name="d", type="date", earliest="19000101"), "$.inputs[0]")
    assert err.value.path == "$.inputs[0].earliest"
    with pytest.raises(SchemaError):
        day_bounds(Input(name="d", type="date", latest="tomorrow"), "$.inputs[0]")
    with pytest.raises(SchemaError, match="is after latest"):
        day_bounds(Input(name="d", type="date", earliest="2020-01-02", latest="2020-01-01"))
