"""Tests for engine/data/inputs.py: numpy, Arrow and pandas data -> the float matrix kernels read."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scoreline.engine.data.inputs import column_as_float, to_matrix
from scoreline.errors import InputError

NAMES = ("age", "income", "state", "score")
CATS = {2: ("CA", "NY", "TX")}


def _reference(columns: list[list], names, categories) -> np.ndarray:
    """Row-major, one Python value at a time: the slow obvious conversion."""
    rows = len(columns[0]) if columns else 0
    out = np.empty((rows, len(names)))
    for j, values in enumerate(columns):
        cats = categories.get(j)
        for i, value in enumerate(values):
            if value is None:
                out[i, j] = np.nan
            elif cats is not None and isinstance(value, str):
                out[i, j] = cats.index(value) if value in cats else np.nan
            else:
                out[i, j] = float(value)
    return out


# --- numpy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_fitting_numpy_is_returned_as_is(dtype, order):
    X = np.arange(12, dtype=dtype).reshape(3, 4).copy(order=order)
    assert to_matrix(X, NAMES, CATS) is X


def test_numpy_ints_and_strided_views_are_converted():
    X = np.arange(24, dtype=np.int32).reshape(3, 8)
    got = to_matrix(X[:, ::2], NAMES, {})
    assert got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, X[:, ::2].astype(np.float64))
    strided = np.arange(24.0).reshape(3, 8)[:, ::2]
    got = to_matrix(strided, NAMES, {})
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, strided)
    assert to_matrix(X[:, :4].astype(np.bool_), NAMES, {}, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 3)), "expected 4 features, got 3"),
        (np.zeros(4), "expected a 2-D array of shape (rows, 4), got 1-D"),
        (np.zeros((2, 4), dtype=object), "expected a numeric array, got dtype object"),
        (np.zeros((2, 4), dtype=np.complex128), "expected a numeric array, got dtype complex128"),
        ([[1, 2, 3, 4]], "expected a 2-D numpy array, a pyarrow Table or RecordBatch or a pandas DataFrame, got list"),
    ],
)
def test_bad_numpy_is_refused(data, message):
    with pytest.raises(InputError) as info:
        to_matrix(data, NAMES, {})
    assert info.value.message == message


def test_bad_dtype_is_refused():
    with pytest.raises(InputError, match="expected dtype float64 or float32, got int64"):
        to_matrix(np.zeros((1, 4)), NAMES, {}, dtype=np.int64)


# --- Arrow ---------------------------------------------------------------------------------


def test_arrow_columns_by_name_with_nulls_categories_and_extra_columns():
    table = pa.table(
        {
            "extra": ["ignored", "too", "x"],
            "score": pa.array([1.5, None, -np.inf], pa.float32()),
            "state": ["NY", None, "ZZ"],
            "income": pa.array([1, None, 3], pa.int16()),
            "age": [True, None, False],
        }
    )
    got = to_matrix(table, NAMES, CATS)
    assert got.flags.f_contiguous and got.dtype == np.float64
    expected = _reference(
        [[1, None, 0], [1, None, 3], ["NY", None, "ZZ"], [1.5, None, -np.inf]], NAMES, CATS
    )
    np.testing.assert_array_equal(got, expected)
    batch = table.to_batches()[0]
    np.testing.assert_array_equal(to_matrix(batch, NAMES, CATS), expected)


def test_arrow_dictionary_chunks_with_different_dictionaries():
    first = pa.array(["TX", "CA", None]).dictionary_encode()
    second = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int32()), pa.array(["nowhere", "NY"]))
    column = pa.chunked_array([first, second])
    numbers = pa.chunked_array([pa.array([1.0, 2.0]), pa.array([3.0, 4.0, 5.0, 6.0])])
    table = pa.Table.from_arrays([numbers, numbers, column, numbers], names=list(NAMES))
    got = to_matrix(table, NAMES, CATS, dtype=np.float32)
    assert got.dtype == np.float32 and got.flags.f_contiguous
    np.testing.assert_array_equal(got[:, 2], [2, 0, np.nan, 1, np.nan, 1])
    np.testing.assert_array_equal(got[:, 0], [1, 2, 3, 4, 5, 6])


def test_arrow_numeric_types_decimal_and_null_columns():
    table = pa.table(
        {
            "age": pa.array([decimal.Decimal("1.25"), None]),
            "income": pa.array([None, None], pa.null()),
            "state": pa.array([2, 7], pa.uint8()),  # numeric codes pass through, as in LightGBM
            "score": pa.array([1, 2]).dictionary_encode(),  # numeric dictionary, no categories
        }
    )
    got = to_matrix(table, NAMES, CATS)
    np.testing.assert_array_equal(got, [[1.25, np.nan, 2, 1], [np.nan, np.nan, 7, 2]])


def test_arrow_integer_categories_map_dictionary_values():
    cats = {0: [10, 20, 30]}  # a list, as LightGBM's pandas_categorical holds them, works too
    table = pa.table({"age": pa.array([30, 10, 99, None]).dictionary_encode()})
    np.testing.assert_array_equal(to_matrix(table, ["age"], cats)[:, 0], [2, 0, np.nan, np.nan])


@pytest.mark.parametrize(
    ("table", "message", "path"),
    [
        (pa.table({"Age": [1.0]}), "column 'age' is missing; did you mean 'Age'?", "column 'age'"),
        (pa.table({"agee": [1.0]}), "column 'age' is missing; did you mean 'agee'?", "column 'age'"),
        (pa.table({"zzz": [1.0]}), "column 'age' is missing", "column 'age'"),
        (pa.table({"age": ["12"]}), "column 'age' is string, expected numeric", "column 'age'"),
        (pa.table({"age": pa.array(["1"]).dictionary_encode()}), "column 'age' is string, expected numeric", "column 'age'"),
        (pa.table({"age": pa.array([1], pa.timestamp("s"))}), "column 'age' is timestamp[s], expected numeric", "column 'age'"),
        (pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["age", "age"]), "column 'age' appears more than once", "column 'age'"),
    ],
)
def test_bad_arrow_columns_are_named(table, message, path):
    with pytest.raises(InputError) as info:
        to_matrix(table, ["age"], {})
    assert info.value.message == message
    assert info.value.path == path


def test_category_type_mismatch_is_named():
    with pytest.raises(InputError, match="column 'state' holds string values, but the model's categories for it are int64"):
        to_matrix(pa.table({"state": ["NY"]}), ["state"], {0: (1, 2)})


def test_empty_table_gives_empty_matrix():
    table = pa.table({name: pa.array([], pa.float64()) for name in NAMES})
    assert to_matrix(table, NAMES, CATS).shape == (0, 4)


values = st.one_of(st.none(), st.floats(allow_nan=False, width=64), st.sampled_from(["CA", "NY", "TX", "??"]))


@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(allow_nan=False)),
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            st.one_of(st.none(), st.sampled_from(["CA", "NY", "TX", "??"])),
            st.one_of(st.none(), st.booleans()),
        ),
        max_size=30,
    ),
    chunk=st.integers(1, 8),
    dictionary=st.booleans(),
)
def test_arrow_matrix_matches_row_major_reference(rows, chunk, dictionary):
    columns = [list(col) for col in zip(*rows)] if rows else [[], [], [], []]
    types = [pa.float64(), pa.int64(), pa.string(), pa.bool_()]
    arrays = []
    for values_, kind in zip(columns, types):
        pieces = [pa.array(values_[i : i + chunk], kind) for i in range(0, len(values_), chunk)]
        if dictionary and kind == pa.string():
            pieces = [piece.dictionary_encode() for piece in pieces]
        arrays.append(pa.chunked_array(pieces, type=pieces[0].type if pieces else kind))
    table = pa.Table.from_arrays(arrays, names=list(NAMES))
    expected = _reference(columns, NAMES, CATS)
    np.testing.assert_array_equal(to_matrix(table, NAMES, CATS), expected)


# --- pandas --------------------------------------------------------------------------------


def test_pandas_matches_lightgbm_data_from_pandas():
    pd = pytest.importorskip("pandas")
    basic = pytest.importorskip("lightgbm.basic")
    frame = pd.DataFrame(
        {
            "age": [1.0, None, 3.0, 4.0],
            "income": pd.array([1, None, 3, 4], dtype="Int64"),
            "state": pd.Categorical(["TX", "CA", "ZZ", None]),
            "score": [True, False, True, False],
        }
    )
    pandas_categorical = [list(CATS[2])]
    expected, *_ = basic._data_from_pandas(frame, "auto", "auto", pandas_categorical)
    got = to_matrix(frame, NAMES, CATS)
    assert got.flags.f_contiguous
    np.testing.assert_array_equal(got, expected)


def test_pandas_columns_by_name_strings_and_errors():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"score": [0.5, 1.5], "state": ["NY", "nowhere"], "age": [1, 2], "income": [None, 7.0], "x": ["a", "b"]}
    )
    np.testing.assert_array_equal(to_matrix(frame, NAMES, CATS), [[1, np.nan, 1, 0.5], [2, 7, np.nan, 1.5]])
    with pytest.raises(InputError, match="column 'x' is string, expected numeric"):
        to_matrix(frame, ["x"], {})
    with pytest.raises(InputError, match="column 'scor' is missing; did you mean 'score'"):
        to_matrix(frame, ["scor"], {})
    with pytest.raises(InputError, match=r"column 'when' is datetime64\[.*\], expected numeric"):
        to_matrix(pd.DataFrame({"when": pd.to_datetime(["2024-01-01"])}), ["when"], {})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mixed", [False, True])
def test_pandas_frame_of_exactly_the_features(dtype, mixed):
    """The whole-frame conversion (features in order, numpy dtypes) agrees with the per-column
    path (the same frame with its columns reordered) and never hands out a read-only view."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(5, 4)) * 1e6, columns=list(NAMES))
    if mixed:
        frame["income"] = rng.integers(-(2**40), 2**40, size=5)
        frame["state"] = [True, False, True, True, False]
    got = to_matrix(frame, NAMES, CATS, dtype=dtype)
    assert got.dtype == dtype and got.flags.writeable and got.flags.f_contiguous
    reordered = frame[list(reversed(NAMES))]
    np.testing.assert_array_equal(got, to_matrix(reordered, NAMES, CATS, dtype=dtype))
    np.testing.assert_array_equal(got, frame.to_numpy(np.float64).astype(dtype))


# --- column_as_float -----------------------------------------------------------------------


def test_column_as_float_is_zero_copy_without_nulls():
    array = pa.array([1.0, 2.5, -3.0])
    got = column_as_float(array)
    assert got.dtype == np.float64 and not got.flags.writeable  # a view of the Arrow buffer
    np.testing.assert_array_equal(got, [1.0, 2.5, -3.0])


@given(hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=False)), st.data())
def test_column_as_float_nulls_become_nan(values, data):
    mask = data.draw(hnp.arrays(np.bool_, len(values)))
    chunked = data.draw(st.booleans())
    array = pa.array(values, mask=mask)
    if chunked:
        half = len(values) // 2
        array = pa.chunked_array([array[:half], array[half:]], type=pa.float64())
    expected = np.where(mask, np.nan, values)
    np.testing.assert_array_equal(column_as_float(array), expected)


def test_column_as_float_converts_ints_and_refuses_strings():
    got = column_as_float(pa.chunked_array([pa.array([1, None], pa.int32())]))
    np.testing.assert_array_equal(got, [1.0, np.nan])
    assert got.dtype == np.float64
    with pytest.raises(InputError, match="column 'city' is string, expected numeric"):
        column_as_float(pa.array(["a"]), name="city")


NUMERIC_TYPES = [pa.int8(), pa.int32(), pa.int64(), pa.uint64(), pa.float32(), pa.float64()]


@given(
    data=st.data(),
    types=st.lists(st.sampled_from(NUMERIC_TYPES), min_size=1, max_size=5),
    rows=st.integers(0, 20),
    dtype=st.sampled_from([np.float64, np.float32]),
    as_table=st.booleans(),
)
def test_numeric_batches_match_reference(data, types, rows, dtype, as_table):
    """All-numeric single-chunk input (the one-call gather) agrees with the per-value reference."""
    columns = []
    for kind in types:
        if pa.types.is_integer(kind):
            info = np.iinfo(kind.to_pandas_dtype())
            element = st.integers(max(info.min, -(2**40)), min(info.max, 2**40))
        else:
            element = st.floats(width=32 if kind == pa.float32() else 64, allow_nan=False)
        columns.append(data.draw(st.lists(st.one_of(st.none(), element), min_size=rows, max_size=rows)))
    names = [f"c{j}" for j in range(len(types))]
    order = data.draw(st.permutations(range(len(types))))  # features asked for in another order
    batch = pa.RecordBatch.from_arrays([pa.array(c, k) for c, k in zip(columns, types)], names=names)
    source = pa.Table.from_batches([batch]) if as_table else batch
    wanted = [names[j] for j in order]
    got = to_matrix(source, wanted, {0: ("a", "b")}, dtype=dtype)  # numeric codes pass through
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in numpy
        expected = _reference([columns[j] for j in order], wanted, {}).astype(dtype)
    assert got.dtype == dtype and got.flags.f_contiguous and got.shape == (rows, len(types))
    np.testing.assert_array_equal(got, expected)
