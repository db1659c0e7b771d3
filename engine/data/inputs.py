"""Input adapters: numpy, Arrow and pandas data -> the validated float matrix the kernels read."""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import InputError

__all__ = ["to_matrix", "column_as_float"]

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))
_NUMBER_IDS = frozenset(
    kind.id
    for kind in (
        pa.float64(), pa.float32(), pa.float16(), pa.int8(), pa.int16(), pa.int32(), pa.int64(),
        pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
    )
)
_TEXT_IDS = frozenset(
    kind.id for kind in (pa.string(), pa.large_string(), pa.string_view(), pa.binary(), pa.large_binary())
)

# Cost of the Arrow path, measured on this shared, busy 2-core machine (medians, one thread, 28
# float64 columns in 64k-row batches, scaled to 1M rows; the figures drift 2-4x with the load, so
# compare the ratios): the F-order matrix costs ~23-47 ms per million rows without nulls and ~40 ms
# with 10% nulls in 7 columns, against ~160-400 ms for the naive row-major matrix
# (`out[:, j] = column` scatters with a stride of 28 values) and ~120-490 ms for
# `np.ascontiguousarray(table.to_pandas().to_numpy())`. At 1M-row batches a fresh 224 MB numpy
# output adds its page faults (~75 ms). One row of 28 numeric columns: ~13-22 us through Arrow's
# one-call `to_tensor` (+~8 us when the features must be picked out of a wider batch), against
# ~65 us column by column (`batch.column(i)` ~0.9 us and `to_numpy` ~0.5 us each).


def to_matrix(
    data,
    feature_names: Sequence[str],
    categories: Mapping[int, tuple],
    dtype=np.float64,
) -> np.ndarray:
    """Turn ``data`` into the ``(n, len(feature_names))`` float matrix that ``predict_matrix`` takes.

    Parameters
    ----------
    data:
        A 2-D numpy array (columns in model order), a ``pyarrow.Table`` or ``RecordBatch``, or a
        ``pandas.DataFrame`` (columns matched by feature name; extra columns are ignored).
    feature_names:
        The model's feature names, in model order.
    categories:
        Feature index -> category values (position = code, like LightGBM's
        ``pandas_categorical``). String and dictionary columns of these features are mapped to
        codes; an unseen category or a null becomes NaN.
    dtype:
        ``np.float64`` or ``np.float32``: the element type of a matrix built from Arrow or pandas
        (and of a converted numpy array).

    Returns
    -------
    numpy.ndarray
        A fitting float64/float32 C- or F-contiguous numpy array is returned as is; Arrow and
        pandas input gives a new F-order (feature-major) matrix with NaN for nulls.

    Raises
    ------
    InputError
        Wrong number of features, a missing or duplicated column (with the likely misspelling),
        a non-numeric column for a numeric feature, categories of the wrong type.
    """
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS:
        raise InputError(f"expected dtype float64 or float32, got {dtype}", path="dtype")
    if dtype == np.float32:
        # A float64 beyond float32's range becomes +-inf, as in numpy's astype and LightGBM:
        # intended, so not a RuntimeWarning on every batch.
        with np.errstate(over="ignore"):
            return _convert(data, feature_names, categories, dtype)
    return _convert(data, feature_names, categories, dtype)


def _convert(data, feature_names, categories, dtype) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return _from_numpy(data, len(feature_names), dtype)
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return _from_arrow(data, feature_names, categories, dtype)
    # pandas is optional: only a DataFrame from an already imported pandas can be one.
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        return _from_pandas(data, feature_names, categories, dtype, pd)
    raise InputError(
        "expected a 2-D numpy array, a pyarrow Table or RecordBatch or a pandas DataFrame, "
        f"got {type(data).__name__}"
    )


def column_as_float(array: pa.Array | pa.ChunkedArray, name: str | None = None) -> np.ndarray:
    """One numeric Arrow column as a float64 numpy array, nulls as NaN.

    A float64 array without nulls comes back as a zero-copy, read-only view of the Arrow buffer;
    anything else is converted (bool, integer, decimal, float16/32, null, dictionary of numbers).
    ``name`` only labels errors. Raises ``InputError`` for string or other non-numeric columns.
    """
    label = name if name is not None else "value"
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 1:
            array = array.chunk(0)
        else:
            out = np.empty(len(array), np.float64)
            _fill(out, array, label, None)
            return out
    values = _as_numbers(array, label, None)
    return values if values.dtype == np.float64 else values.astype(np.float64)


def _from_numpy(data: np.ndarray, num_features: int, dtype: np.dtype) -> np.ndarray:
    if data.ndim != 2:
        raise InputError(f"expected a 2-D array of shape (rows, {num_features}), got {data.ndim}-D")
    if data.shape[1] != num_features:
        raise InputError(f"expected {num_features} features, got {data.shape[1]}")
    if data.dtype.kind not in "biuf":
        raise InputError(f"expected a numeric array, got dtype {data.dtype}")
    if data.dtype in _FLOATS and (data.flags.c_contiguous or data.flags.f_contiguous):
        return data
    # 'K' keeps a contiguous array's layout; a strided view is gathered into C order.
    order = "K" if (data.flags.c_contiguous or data.flags.f_contiguous) else "C"
    target = data.dtype if data.dtype in _FLOATS else dtype
    return np.array(data, dtype=target, order=order)


def _from_arrow(data, feature_names, categories, dtype) -> np.ndarray:
    names = data.schema.names
    positions = _positions(names)
    picked = []
    for name in feature_names:
        pos = positions.get(name, -1)
        if pos < 0:
            _find(positions, name, names)
        picked.append(pos)
    fast = _numeric_tensor(data, picked, len(names), dtype)
    if fast is not None:
        return fast
    out = np.empty((data.num_rows, len(feature_names)), dtype, order="F")
    chunked = isinstance(data, pa.Table)
    for j, (name, pos) in enumerate(zip(feature_names, picked)):
        cats = categories.get(j) if categories else None
        if chunked:
            _fill(out[:, j], data.column(pos), name, cats)
        else:
            out[:, j] = _as_numbers(data.column(pos), name, cats)
    return out


def _numeric_tensor(data, picked: list[int], width: int, dtype: np.dtype) -> np.ndarray | None:
    """All-numeric columns in one chunk: Arrow's C++ ``to_tensor`` gathers them column-major with
    nulls as NaN in one call, instead of ~1.5 us of pyarrow calls per column (one row of 28
    columns: ~25 us against ~65 us). ``None`` when a column is not a plain number (bool, decimal,
    dictionary, string: the per-column path handles and names those)."""
    if not picked:
        return None
    selected = data if picked == list(range(width)) else data.select(picked)
    if isinstance(selected, pa.Table):
        batches = selected.to_batches()
        if len(batches) != 1:
            return None
        selected = batches[0]
    try:
        tensor = selected.to_tensor(null_to_nan=True, row_major=False)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        return None
    matrix = np.asarray(tensor)
    if matrix.dtype == dtype:
        return matrix
    if dtype == np.float64:
        return matrix.astype(dtype, order="F")  # float32/float16 widen exactly
    # float32 wanted from a float64 tensor: integers would round twice (int64 -> float64 ->
    # float32); the per-column path rounds once, as numpy's astype does.
    return None


def _from_pandas(data, feature_names, categories, dtype, pd) -> np.ndarray:
    names = [str(label) for label in data.columns]
    if names == list(feature_names) and all(
        isinstance(kind, np.dtype) and kind.kind in "biuf" for kind in data.dtypes
    ):
        # Exactly the features, in order, all plain numpy numbers: pandas converts its blocks in
        # C. Measured under load, 28 columns: one row ~45 us against ~830 us column by column
        # through `iloc`; 100k rows ~6 ms against ~14 ms. A single-block frame comes back as a
        # read-only view: copied, since a read-only matrix would make the kernels compile
        # another specialisation mid-request.
        # Frames of several dtypes interleave into C order: made F order like every
        # Arrow/pandas matrix (docs/contracts.md).
        matrix = data.to_numpy(dtype=dtype)
        if not matrix.flags.writeable or not matrix.flags.f_contiguous:
            matrix = np.array(matrix, order="F")
        return matrix
    positions = _positions(names)
    out = np.empty((len(data), len(feature_names)), dtype, order="F")
    for j, name in enumerate(feature_names):
        pos = _find(positions, name, names)
        series = data.iloc[:, pos]
        kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else None
        if kind is not None and kind in "biuf":
            out[:, j] = series.to_numpy()
        elif kind is None and _masked_numeric(series.dtype, pd):
            # Nullable Int64/Float64/boolean: pd.NA -> NaN in one conversion.
            out[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        elif kind is not None and kind != "O":
            raise InputError(f"column {name!r} is {series.dtype}, expected numeric", path=_path(name))
        else:
            # Categorical, string, object and Arrow-backed columns take the Arrow path, so a
            # pandas category maps through the model's categories exactly like an Arrow
            # dictionary (LightGBM's set_categories + codes; unseen -> NaN).
            try:
                array = pa.array(series, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(
                    f"column {name!r} cannot be read as numbers or categories: {exc}", path=_path(name)
                ) from None
            _fill(out[:, j], array, name, categories.get(j))
    return out


def _masked_numeric(dtype, pd) -> bool:
    return isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "biuf" and not isinstance(
        dtype, (pd.CategoricalDtype, pd.ArrowDtype)
    )


def _positions(names: list[str]) -> dict[str, int]:
    """Column name -> position; a name present more than once maps to -1."""
    positions = {name: i for i, name in enumerate(names)}
    if len(positions) != len(names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                positions[name] = -1
            seen.add(name)
    return positions


def _find(positions: dict[str, int], name: str, names: list[str]) -> int:
    pos = positions.get(name)
    if pos is None:
        hint = _likely(name, names)
        suffix = f"; did you mean {hint!r}?" if hint is not None else ""
        raise InputError(f"column {name!r} is missing{suffix}", path=_path(name))
    if pos < 0:
        raise InputError(f"column {name!r} appears more than once", path=_path(name))
    return pos


def _likely(name: str, names: list[str]) -> str | None:
    folded = [other for other in names if other.casefold() == name.casefold()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def _path(name: str) -> str:
    return f"column {name!r}"


def _fill(out: np.ndarray, column: pa.Array | pa.ChunkedArray, name: str, cats: tuple | None) -> None:
    """Write one column into ``out`` (a contiguous 1-D view), chunk by chunk."""
    if isinstance(column, pa.Array):
        out[:] = _as_numbers(column, name, cats)
        return
    start = 0
    for chunk in column.iterchunks():
        stop = start + len(chunk)
        out[start:stop] = _as_numbers(chunk, name, cats)
        start = stop


def _as_numbers(array: pa.Array, name: str, cats: tuple | None) -> np.ndarray:
    """A numpy view or copy of one chunk's values with NaN for nulls (any numeric dtype)."""
    kind = array.type
    if kind.id in _NUMBER_IDS:
        # Zero-copy when there are no nulls; with nulls Arrow returns float64 with NaN.
        return array.to_numpy(zero_copy_only=False)
    if pa.types.is_dictionary(kind):
        if cats:
            return _codes(array, cats, name)
        return _as_numbers(array.dictionary_decode(), name, None)
    if kind.id in _TEXT_IDS:
        if cats:
            return _codes(array, cats, name)
        raise InputError(f"column {name!r} is string, expected numeric", path=_path(name))
    if pa.types.is_boolean(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind):
        # Arrow's bool is bit-packed and a null bool would become an object array: cast first.
        return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    raise InputError(f"column {name!r} is {kind}, expected numeric", path=_path(name))


def _codes(array: pa.Array, cats: tuple, name: str) -> np.ndarray:
    """Category values -> codes (their position in ``cats``); unseen values and nulls -> NaN."""
    value_set = _value_set(cats if isinstance(cats, tuple) else tuple(cats), name)
    try:
        codes = pc.index_in(array, value_set=value_set)
    except (pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowInvalid):
        values = array.type.value_type if pa.types.is_dictionary(array.type) else array.type
        raise InputError(
            f"column {name!r} holds {values} values, but the model's categories for it are {value_set.type}",
            path=_path(name),
        ) from None
    return codes.to_numpy(zero_copy_only=False)


@functools.lru_cache(maxsize=256)
def _value_set(cats: tuple, name: str) -> pa.Array:
    # Cached: a model's category tuples are few and fixed, and building them costs more than the
    # lookup for a one-row request.
    try:
        return pa.array(list(cats))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"the model's categories for {name!r} mix types: {exc}", path=_path(name)) from None
