"""The fill stage: a request's rows -> the work matrix, from inline values or the entity store.

Rows come as an Arrow batch (the Arrow door, bulk files) or as a `RowBatch` of raw JSON values
(v1, v2). Either way a row with no inline input at all is looked up by its key; every value is
checked by engine/data/fields.py (Arrow columns by `check_column`, raw values by `check_value`:
the same rules and messages). A bad row gets its error in `state.errors` and NaN work values.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pyarrow as pa

from scoreline.errors import InputError, NotFoundError, SchemaError, ScorelineError

from scoreline.engine.data.fields import check_column, check_value, index_in
from scoreline.engine.data.request import RowBatch
from scoreline.engine.data.storeview import StoreView
from scoreline.engine.pipeline.plan import Plan, bool_key
from scoreline.engine.pipeline.stages import Stage, State

__all__ = ["Entities", "Fill", "codes"]

class Entities:
    """A deployment's entity store, opened on first use (or attached now), with its view."""

    def __init__(self, model_id: str, spec, base, store, plan: Plan, columns: dict[str, str],
                 key_name: str) -> None:
        self.model_id = model_id
        self.key_name = key_name
        self.plan = plan
        self.columns = columns  # input name -> store column (entity.columns renames)
        self.lookup_columns = list(dict.fromkeys(columns.values()))
        # store=None: the manifest's store, opened on the first lookup (a bulk job over files of
        # raw inputs never opens it); a store object: attached (and converted) now.
        self._spec = spec if store is None else None
        self._base = base
        self._lock = threading.Lock()
        self.store = None
        self.view: StoreView | None = None
        if store:
            self._attach(store)

    def _attach(self, store) -> None:
        have = set(store.schema.names)
        for name, column in self.columns.items():
            if column not in have:
                raise SchemaError(
                    f"input {name!r} reads column {column!r}, which the entity store lacks "
                    f"(columns: {', '.join(store.schema.names)}); map it in entity.columns",
                    path=f"$.entity.columns.{name}")
        # Stored rows converted once per store snapshot (see engine/data/storeview.py).
        self.view = StoreView(store, self.plan, self.columns, codes) \
            if StoreView.supports(store) else None
        self.store = store

    def ready(self) -> bool:
        """Open the manifest's store if it is not open yet; whether there is a store at all."""
        if self.store is None and self._spec is not None:
            with self._lock:
                if self.store is None:
                    from scoreline.engine.data.entities import open_store

                    self._attach(open_store(self._spec, self._base))
        return self.store is not None

    def not_found(self, key) -> NotFoundError:
        return NotFoundError(f"{self.key_name} {key!r} not found in the entity store of model "
                             f"{self.model_id!r}", path=f"$.{self.key_name}")

    def no_store(self) -> InputError:
        return InputError(f"no inputs given and model {self.model_id!r} has no entity store: "
                          "send `$.inputs`", path="$.inputs")

    def no_key(self) -> SchemaError:
        return SchemaError(f"expected `$.{self.key_name}` or `$.inputs`, got neither",
                           path=f"$.{self.key_name}")


class Fill(Stage):
    """Fills `state.work` (and `state.keys`) from `state.source`; see the module docstring."""

    def __init__(self, plan: Plan, entities: Entities, input_specs, key_type: pa.DataType) -> None:
        self.plan = plan
        self.entities = entities
        self.specs = tuple(input_specs)
        self.names = tuple(slot.spec.name for slot in plan.inputs)
        self.key_name = entities.key_name
        self.key_type = key_type

    # --- n rows -------------------------------------------------------------------------------

    def run(self, state: State) -> None:
        source = state.source
        if isinstance(source, RowBatch):
            self._values(state, source)
        else:
            self._arrow(state, source)

    def _arrow(self, state: State, batch: pa.RecordBatch) -> None:
        n = state.n
        names = set(batch.schema.names)
        present = [s.name for s in self.specs if s.name in names]
        has_key = self.key_name in names
        if not has_key:
            absent = [s.name for s in self.specs
                      if s.required and s.default is None and s.name not in names]
            if absent:
                raise InputError(
                    f"the batch has neither the key column {self.key_name!r} nor the required "
                    f"input column {absent[0]!r}", path=f"column {absent[0]!r}")
        keys = batch.column(self.key_name) if has_key else pa.nulls(n, self.key_type)
        keys = _as_key_column(keys, self.key_type, self.key_name)
        state.keys = keys
        # Which rows come from the entity store: those with no inline input at all.
        looked_up = np.ones(n, dtype=bool)
        for name in present:
            col = batch.column(name)
            nulls = col.null_count
            if nulls == 0:  # every row has this input inline
                looked_up[:] = False
                break
            if nulls < n:
                looked_up &= col.is_null().to_numpy(zero_copy_only=False)
        work = state.work = self.plan.new_work(n)
        inline_rows = np.flatnonzero(~looked_up)
        lookup_rows = np.flatnonzero(looked_up)
        if len(inline_rows):
            source = batch if len(inline_rows) == n else batch.take(pa.array(inline_rows))
            self.fill_columns(work, inline_rows, source, state.errors)
        if len(lookup_rows):
            self._from_store(work, lookup_rows, keys, state.errors)

    def _values(self, state: State, rows: RowBatch) -> None:
        n = rows.n
        work = state.work = self.plan.new_work(n)
        state.keys = rows.keys
        inputs = rows.inputs
        columns = [inputs.get(slot.spec.name) if inputs else None for slot in self.plan.inputs]
        given = [c for c in columns if c is not None]
        lookup = []
        errors = state.errors
        for i in range(n):
            if not any(c[i] is not None for c in given):
                lookup.append(i)
                continue
            try:
                self._fill_row(work, i, [None if c is None else c[i] for c in columns])
            except ScorelineError as exc:
                errors[i] = exc
                work[i] = math.nan
        if lookup:
            at = np.array(lookup, dtype=np.int64)
            keys = pa.array(rows.keys if len(lookup) == n else [rows.keys[i] for i in lookup],
                            self.key_type)
            self._from_store(work, at, keys, errors)

    def fill_columns(self, work: np.ndarray, rows: np.ndarray, source, errors: dict) -> None:
        """Check `source`'s input columns (rows `rows` of the batch) into the work matrix."""
        n = len(rows)
        full = n == work.shape[0]
        part_errors: dict[int, ScorelineError] = {}
        missing: dict[int, ScorelineError] = {}
        names = set(source.schema.names)
        for slot in self.plan.inputs:
            spec = slot.spec
            arr = source.column(spec.name) if spec.name in names else pa.nulls(n)
            numbers, keys = check_column(spec, arr, part_errors, want_keys=bool(slot.codes),
                                         missing=missing)
            if slot.slot >= 0:
                if full:
                    work[:, slot.slot] = numbers
                else:
                    work[rows, slot.slot] = numbers
            for code in slot.codes:
                values = codes(keys, code.keys)
                if full:
                    work[:, code.slot] = values
                else:
                    work[rows, code.slot] = values
        for row, error in part_errors.items():
            errors.setdefault(int(rows[row]), error)
        for row, error in missing.items():  # a row's bad value is its error before a missing one
            errors.setdefault(int(rows[row]), error)

    def _from_store(self, work, rows: np.ndarray, keys: pa.Array, errors: dict) -> None:
        """Fill rows `rows` from the entity store by their keys; unknown keys are row errors.
        `keys`: the keys of those rows (or of every row, when `rows` is all of them)."""
        e = self.entities
        wanted = keys if len(rows) == len(keys) else keys.take(pa.array(rows))
        if not e.ready():
            for row in rows.tolist():
                errors.setdefault(row, e.no_store())
            return
        # is_null().to_numpy() is ~10 us even for one row: only when there are nulls.
        null_key = wanted.is_null().to_numpy(zero_copy_only=False) if wanted.null_count \
            else np.zeros(len(wanted), dtype=bool)
        for row in rows[null_key].tolist():
            errors.setdefault(row, e.no_key())
        if e.view is not None:
            found = self._from_view(work, rows, wanted, null_key, errors)
        else:
            table, found = e.store.lookup(wanted, e.lookup_columns)
            # Store columns seen through the manifest's input names (entity.columns renames).
            renamed = pa.table({name: table.column(column) for name, column in e.columns.items()})
            self.fill_columns(work, rows, renamed, errors)
        missing = ~np.asarray(found, dtype=bool) & ~null_key
        if missing.any():
            values = wanted.filter(pa.array(missing)).to_pylist()
            for row, key in zip(rows[missing].tolist(), values):
                # Set, not setdefault: a row of nulls for an unknown key is "not found", first.
                errors[row] = e.not_found(key)

    def _from_view(self, work, rows, wanted: pa.Array, null_key, errors) -> np.ndarray:
        """The converted store's values for `wanted` keys into rows `rows`; returns found."""
        view = self.entities.view
        current = view.snapshot()
        ids = wanted.fill_null(0) if wanted.null_count else wanted
        stored, found = current.index.find(
            ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), ~null_key)
        values = current.values[stored]
        # One fancy assignment for all the slots (a column at a time costs ~1 us per slot).
        if len(rows) == work.shape[0]:
            work[:, view.slots] = values
        else:
            work[np.ix_(rows, view.slots)] = values
        if current.errors:
            for i in np.flatnonzero(current.bad[stored] & found).tolist():
                errors.setdefault(int(rows[i]), current.errors[int(stored[i])])
        return found

    # --- one row: the same rules without Arrow; a row's error is raised ------------------------

    def run_one(self, state: State) -> None:
        rows: RowBatch = state.source
        key = rows.keys[0]
        state.keys = rows.keys
        work = state.work = np.empty((1, self.plan.width), dtype=np.float64)
        inputs = rows.inputs
        if inputs:
            values = [inputs[name][0] if name in inputs else None for name in self.names]
            for v in values:
                if v is not None:
                    self._fill_row(work, 0, values)
                    return
        e = self.entities
        if key is None:
            raise e.no_key()
        if e.store is None and not e.ready():
            raise e.no_store()
        if e.view is not None and type(key) is int:
            view = e.view
            current = view.snapshot()
            row = current.index.find_one(key)
            if row < 0:
                raise e.not_found(key)
            if current.bad[row]:
                raise current.errors[row]
            work[0, view.span] = current.values[row]
            return
        keys = np.array([key], dtype=np.int64) if type(key) is int else [key]
        table, found = e.store.lookup(keys, e.lookup_columns)
        if not found[0]:
            raise e.not_found(key)
        self._fill_row(work, 0, [table.column(e.columns[slot.spec.name])[0].as_py()
                                 for slot in self.plan.inputs])

    def _fill_row(self, work: np.ndarray, i: int, values: list) -> None:
        """Raw values (one per plan input, None missing) checked into work row `i`; a bad value
        is the row's error before a missing one (as in `fill_columns`)."""
        missing = None
        for slot, raw in zip(self.plan.inputs, values):
            try:
                value = check_value(slot.spec, raw)
            except InputError:
                if raw is not None:
                    raise
                missing = missing or sys.exc_info()[1]
                continue
            if slot.slot >= 0:
                work[i, slot.slot] = math.nan if value is None else value
            if slot.codes:
                text = _key_text(slot.spec.type, value)
                for code in slot.codes:
                    work[i, code.slot] = math.nan if text is None else code.index.get(text, -1.0)
        if missing is not None:
            raise missing


def codes(keys: pa.Array | None, key_list: tuple[str, ...]) -> np.ndarray:
    """Category codes: position in `key_list`, -1 unseen, NaN null (see kernels.transforms)."""
    if keys is None:
        return np.full(0, np.nan)
    out = index_in(keys, key_list).astype(np.float64)
    if keys.null_count:
        out[keys.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return out


def _key_text(kind: str, value) -> str | None:
    if value is None:
        return None
    if kind == "string":
        return value
    if kind == "bool":
        return bool_key(value == 1.0)
    return str(int(value))


def _as_key_column(keys, key_type: pa.DataType, name: str) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if keys.type.equals(key_type):
        return keys
    if pa.types.is_null(keys.type):
        return pa.nulls(len(keys), key_type)
    try:
        return keys.cast(key_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"expected {key_type} keys in column {name!r}, got {keys.type}",
                         path=f"column {name!r}") from None
