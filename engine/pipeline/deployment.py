"""One model version compiled from its manifest: entity lookup, input checks, transforms, model and
decision, as `Deployment.score(RecordBatch) -> RecordBatch` and a one-row `score_request(dict)`.

Everything is prepared in the constructor (artifact loaded, plan compiled, every kernel warmed by
scoring a generated sample through both paths), so no request ever compiles. `score` is pure: it
does not log. Per-row problems become the row's `error` text; only a batch that cannot be scored
at all raises InputError. A row's error is "... not found ..." for an unknown entity (that is how
the server tells a 404 from a 422) and otherwise names the input's path, `$.inputs.<name>`.

JSON cannot carry NaN, so a non-finite score is never returned: it becomes the row's error.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import (
    InputError, NotFoundError, RegistrationError, SchemaError, ScorelineError,
)
from scoreline.registry import manifest as M

from scoreline.engine.pipeline.decide import Decider
from scoreline.engine.data.fields import EPOCH, check_column, check_default, check_value, index_in
from scoreline.engine.pipeline.plan import Plan, bool_key, compile_plan
from scoreline.engine.data.samples import sample_inputs
from scoreline.engine.data.storeview import StoreView

__all__ = ["Deployment", "validate_version", "scoring_day"]

_KEY_TYPES = {"int": pa.int64(), "string": pa.string()}
# Warm-up batch sizes: one row and a few rows type the work matrix differently in Numba (a 1-row
# F-order matrix is also C-contiguous), and the model switches to its parallel kernel at 2,048.
_WARM_SIZES = (1, 7, 2048)
_ONE_VALID = np.ones(1, dtype=bool)
# Rows of the precomputed constant output columns: batches up to this size slice them.
_CONSTANT_ROWS = 4096


def _today() -> int:
    """Today (UTC) as days since 1970-01-01: ~0.2 us, against ~1.5 us through datetime."""
    return int(time.time() // 86400)


def scoring_day(now=None) -> int:
    """The scoring date as days since 1970-01-01: `now` (a date, a datetime taken in UTC, or
    numpy datetime64) or today in UTC."""
    if now is None:
        return _today()
    if isinstance(now, dt.datetime):
        if now.tzinfo is not None:
            now = now.astimezone(dt.timezone.utc)
        return (now.date() - EPOCH).days
    if isinstance(now, dt.date):
        return (now - EPOCH).days
    if isinstance(now, np.datetime64):
        return int(now.astype("datetime64[D]").astype(np.int64))
    raise SchemaError(f"expected a date or datetime for now, got {now!r}", path="now")


def load_artifact(spec: M.ModelSpec, version_dir: Path):
    """The model object for a manifest's `model` section (the artifact in the version folder)."""
    path = Path(version_dir) / spec.artifact
    if not path.is_file():
        raise NotFoundError(f"artifact {spec.artifact!r} is not in {str(version_dir)!r}",
                            path="$.model.artifact")
    if spec.format == "lightgbm":
        from scoreline.engine.models.model import load_lightgbm

        return load_lightgbm(path, compile=spec.compile)
    from scoreline.engine.models.linear import load_linear

    return load_linear(path)


class Deployment:
    """A model version ready to score: see the module docstring.

    Parameters
    ----------
    manifest: the version's Manifest.
    version_dir: the folder holding its artifact (and, two levels up, the registry root that a
        relative entity-store path is resolved against).
    version: the version number reported in every answer.
    store: an opened entity store to share (the router shares one per store spec), None to open
        the manifest's store here, or False for none (inline inputs only).
    warm: score a generated sample through every path before returning (default True).
    """

    def __init__(self, manifest: M.Manifest, version_dir, *, version: int = 0, store=None,
                 warm: bool = True) -> None:
        started = time.perf_counter()
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.version = int(version)
        self.version_dir = Path(version_dir)
        self.model = load_artifact(manifest.model, self.version_dir)
        for i, spec in enumerate(manifest.inputs):
            check_default(spec, f"$.inputs[{i}].default")
        self.plan: Plan = compile_plan(manifest, self.model.feature_names, self.model.categories)
        self.decider = Decider(manifest, self.model.num_class, self.model.objective, self.plan)
        self.key_name = manifest.entity.key
        self.key_type = _KEY_TYPES[manifest.entity.key_type]
        self.input_names = tuple(i.name for i in manifest.inputs)
        out = manifest.output
        self.score_name = out.score
        self.decision_name = out.decision
        fields = [
            pa.field(self.key_name, self.key_type),
            pa.field("model-id", pa.string()),
            pa.field("model-version", pa.int64()),
            pa.field(out.score, pa.float64()),
            pa.field(out.decision, pa.string()),
        ]
        if self.decider.payload_labels is not None:
            fields.append(pa.field(self.decider.payload_field, pa.string()))
        self.output_schema = pa.schema(fields + [pa.field("error", pa.string())])
        self._names = [f.name for f in fields]
        # The columns that are the same in every answer, built once and sliced per batch (a
        # slice is ~0.4 us; pa.repeat and pa.nulls ~1-9 us each, paid on every request).
        self._constant = {
            "model-id": pa.array([self.model_id] * _CONSTANT_ROWS, pa.string()),
            "model-version": pa.array(np.full(_CONSTANT_ROWS, self.version, dtype=np.int64)),
            "error": pa.nulls(_CONSTANT_ROWS, pa.string()),
        }
        self._payload_name = self._names[5] if len(self._names) > 5 else None
        self._store_columns = {n: manifest.entity.columns.get(n, n) for n in self.input_names}
        self._lookup_columns = list(dict.fromkeys(self._store_columns.values()))
        # store=None: the manifest's store, opened on the first lookup (a bulk job over files of
        # raw inputs never opens it); a store object: attached (and converted) now.
        self._store_spec = manifest.entity.store if store is None else None
        self._store_lock = threading.Lock()
        self.store = None
        self._view = None
        if store:
            self._attach_store(store)
        self._request_fields = frozenset(
            (self.key_name, "inputs", "request-id", "model-id", "model-version"))
        self.compile_seconds = time.perf_counter() - started
        self.warm_seconds = 0.0
        if warm:
            started = time.perf_counter()
            self.check_sample()
            self.warm_seconds = time.perf_counter() - started

    def __repr__(self) -> str:
        return f"<Deployment {self.model_id} v{self.version}>"

    def _attach_store(self, store) -> None:
        have = set(store.schema.names)
        for name, column in self._store_columns.items():
            if column not in have:
                raise SchemaError(
                    f"input {name!r} reads column {column!r}, which the entity store lacks "
                    f"(columns: {', '.join(store.schema.names)}); map it in entity.columns",
                    path=f"$.entity.columns.{name}")
        # Stored rows converted once per store snapshot (see engine/data/storeview.py).
        self._view = StoreView(store, self.plan, self._store_columns, _codes) \
            if StoreView.supports(store) else None
        self.store = store

    def _need_store(self) -> bool:
        """Open the manifest's store if it is not open yet; whether there is a store at all."""
        if self.store is None and self._store_spec is not None:
            with self._store_lock:
                if self.store is None:
                    self._attach_store(open_store(self._store_spec, self.version_dir.parent.parent))
        return self.store is not None

    # --- the batch path -----------------------------------------------------------------------

    def score(self, batch: pa.RecordBatch, *, now=None) -> pa.RecordBatch:
        """Score a batch (see docs/contracts.md): one output row per input row, same order."""
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
                pa.RecordBatch.from_pylist([], schema=batch.schema)
        n = batch.num_rows
        names = set(batch.schema.names)
        present = [name for name in self.input_names if name in names]
        has_key = self.key_name in names
        if not has_key:
            absent = [s.name for s in self.manifest.inputs
                      if s.required and s.default is None and s.name not in names]
            if absent:
                raise InputError(
                    f"the batch has neither the key column {self.key_name!r} nor the required "
                    f"input column {absent[0]!r}", path=f"column {absent[0]!r}")
        today = scoring_day(now)
        errors: dict[int, ScorelineError] = {}
        keys = batch.column(self.key_name) if has_key else pa.nulls(n, self.key_type)
        keys = _as_key_column(keys, self.key_type, self.key_name)

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
        work = self.plan.new_work(n)
        inline_rows = np.flatnonzero(~looked_up)
        lookup_rows = np.flatnonzero(looked_up)
        if len(inline_rows):
            source = batch if len(inline_rows) == n else batch.take(pa.array(inline_rows))
            self._fill(work, inline_rows, source, errors)
        if len(lookup_rows):
            self._fill_from_store(work, lookup_rows, keys, errors)
        return self._finish(work, today, keys, errors)

    def _fill(self, work: np.ndarray, rows: np.ndarray, source, errors: dict) -> None:
        """Check `source`'s input columns (rows `rows` of the batch) into the work matrix."""
        n = len(rows)
        full = n == work.shape[0]
        part_errors: dict[int, ScorelineError] = {}
        names = set(source.schema.names)
        for slot in self.plan.inputs:
            spec = slot.spec
            arr = source.column(spec.name) if spec.name in names else pa.nulls(n)
            numbers, keys = check_column(spec, arr, part_errors, want_keys=bool(slot.codes))
            if slot.slot >= 0:
                if full:
                    work[:, slot.slot] = numbers
                else:
                    work[rows, slot.slot] = numbers
            for code in slot.codes:
                codes = _codes(keys, code.keys)
                if full:
                    work[:, code.slot] = codes
                else:
                    work[rows, code.slot] = codes
        for row, error in part_errors.items():
            errors.setdefault(int(rows[row]), error)

    def _fill_from_store(self, work, rows: np.ndarray, keys: pa.Array, errors: dict) -> None:
        """Fill rows `rows` from the entity store by their keys; unknown keys are row errors."""
        wanted = keys if len(rows) == len(keys) else keys.take(pa.array(rows))
        if not self._need_store():
            for row in rows.tolist():
                errors.setdefault(row, InputError(
                    f"no inputs given and model {self.model_id!r} has no entity store: send "
                    "`$.inputs`", path="$.inputs"))
            return
        # is_null().to_numpy() is ~10 us even for one row: only when there are nulls.
        null_key = wanted.is_null().to_numpy(zero_copy_only=False) if wanted.null_count \
            else np.zeros(len(wanted), dtype=bool)
        for row in rows[null_key].tolist():
            errors.setdefault(row, InputError(
                f"expected `$.{self.key_name}` or `$.inputs`, got neither", path=f"$.{self.key_name}"))
        if self._view is not None:
            found = self._fill_from_view(work, rows, wanted, null_key, errors)
        else:
            table, found = self.store.lookup(wanted, self._lookup_columns)
            # Store columns seen through the manifest's input names (entity.columns renames).
            renamed = pa.table({name: table.column(column)
                                for name, column in self._store_columns.items()})
            self._fill(work, rows, renamed, errors)
        missing = ~np.asarray(found, dtype=bool) & ~null_key
        if missing.any():
            values = wanted.filter(pa.array(missing)).to_pylist()
            for row, key in zip(rows[missing].tolist(), values):
                # Set, not setdefault: a row of nulls for an unknown key is "not found", first.
                errors[row] = NotFoundError(
                    f"{self.key_name} {key!r} not found in the entity store of model "
                    f"{self.model_id!r}", path=f"$.{self.key_name}")

    def _fill_from_view(self, work, rows, wanted: pa.Array, null_key, errors) -> np.ndarray:
        """The converted store's values for `wanted` keys into rows `rows`; returns found."""
        current = self._view.snapshot()
        ids = wanted.fill_null(0) if wanted.null_count else wanted
        stored, found = current.index.find(
            ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), ~null_key)
        values = current.values[stored]
        # One fancy assignment for all the slots (a column at a time costs ~1 us per slot).
        if len(rows) == work.shape[0]:
            work[:, self._view.slots] = values
        else:
            work[np.ix_(rows, self._view.slots)] = values
        if current.errors:
            for i in np.flatnonzero(current.bad[stored] & found).tolist():
                errors.setdefault(int(rows[i]), current.errors[int(stored[i])])
        return found

    def _finish(self, work, today: int, keys: pa.Array, errors: dict) -> pa.RecordBatch:
        n = work.shape[0]
        if n == 0:
            return pa.RecordBatch.from_pylist([], schema=self.output_schema)
        X = self.plan.run(work, today)
        raw = self.model.predict_matrix(X)
        score = self.decider.scores(raw)
        index, payload = self.decider.decide(raw, score, work)
        bad = ~np.isfinite(score)
        any_bad = bool(bad.any())
        if any_bad:
            for row in np.flatnonzero(bad).tolist():
                errors.setdefault(row, InputError(
                    f"the model gave a non-finite score ({score[row]}) for this row", path="score"))
        if errors:
            bad[list(errors)] = True
            any_bad = True
            error_text = [None] * n
            for row, error in errors.items():
                error_text[row] = error.message
            error_column = pa.array(error_text, pa.string())
        else:
            error_column = self._constant_column("error", n)
        columns = [
            keys,
            self._constant_column("model-id", n),
            self._constant_column("model-version", n),
            pa.array(score, mask=bad) if any_bad else pa.array(score),
            self.decider.label_column(index, bad),
        ]
        if payload is not None:
            columns.append(self.decider.payload_column(payload, bad))
        columns.append(error_column)
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema)

    def _constant_column(self, name: str, n: int) -> pa.Array:
        column = self._constant[name]
        if n <= len(column):
            return column.slice(0, n)
        return pa.repeat(column[0], n) if name != "error" else pa.nulls(n, pa.string())

    # --- the one-row path ---------------------------------------------------------------------

    def score_request(self, request: dict, *, now=None) -> dict:
        """One request (`{"<key>": ...}` and/or `{"inputs": {...}}`) -> the contract as a dict.

        Raises NotFoundError for an unknown entity, InputError for a bad value (with its
        `$.inputs.<name>` path), SchemaError for a malformed request. Same values, same rules
        and same kernels as `score`, without building Arrow arrays for one row.
        """
        for field in request:
            if field not in self._request_fields:
                raise SchemaError(f"unknown field `$.{field}`; expected {self.key_name!r}, 'inputs' "
                                  "or 'request-id'", path=f"$.{field}")
        key = request.get(self.key_name)
        inputs = request.get("inputs")
        if inputs is not None and type(inputs) is not dict:
            raise SchemaError(f"expected an object at `$.inputs`, got {inputs!r}", path="$.inputs")
        if key is not None:
            key = _check_key(key, self.manifest.entity.key_type, self.key_name)
        if not inputs or all(inputs.get(name) is None for name in self.input_names):
            if key is not None and self._need_store() and self._view is not None \
                    and type(key) is int:
                work = np.empty((1, self.plan.width), dtype=np.float64)
                self._fill_one_from_view(key, work)
                return self._finish_one(key, work, now)
            inputs = self._lookup_one(key)
        return self.score_values(key, inputs, now=now)

    def can_score_keys(self) -> bool:
        """Whether `score_keys` applies: integer keys served from the store's converted view."""
        return self._view is not None and self._need_store() and self.manifest.entity.key_type == "int"

    def score_keys(self, keys: list[int], *, now=None) -> list:
        """Several key-only requests at once by the one-row path's rules (no Arrow): the contract
        dict per key, or the ScorelineError that row would raise; one kernel call for them all.
        Only when `can_score_keys()`; keys are already checked int64 values."""
        n = len(keys)
        current = self._view.snapshot()
        rows, found = current.index.find(np.array(keys, dtype=np.int64), np.ones(n, dtype=bool))
        results: list = [None] * n
        good = []
        for i in range(n):
            if not found[i]:
                results[i] = NotFoundError(f"{self.key_name} {keys[i]!r} not found in the entity store "
                                           f"of model {self.model_id!r}", path=f"$.{self.key_name}")
            elif current.bad[rows[i]]:
                results[i] = current.errors[int(rows[i])]
            else:
                good.append(i)
        if not good:
            return results
        if len(good) < n:
            rows = rows[good]
        work = self.plan.new_work(len(good))
        work[:, self._view.slots] = current.values[rows]
        raw = self.model.predict_matrix(self.plan.run(work, _today() if now is None else scoring_day(now)))
        decide_one = self.decider.decide_one
        for j, i in enumerate(good):
            score, label, payload = decide_one(raw[j : j + 1], work[j : j + 1])
            if not math.isfinite(score):
                results[i] = InputError(f"the model gave a non-finite score ({score}) for this row",
                                        path="score")
                continue
            out = {"model-id": self.model_id, "model-version": self.version, self.key_name: keys[i],
                   self.score_name: score, self.decision_name: label}
            if self._payload_name is not None:
                out[self._payload_name] = self.decider.payload_list[payload]
            results[i] = out
        return results

    def score_values(self, key, inputs: dict, *, now=None) -> dict:
        """Score one row from raw input values by name (missing names are null)."""
        plan = self.plan
        work = np.empty((1, plan.width), dtype=np.float64)
        for slot in plan.inputs:
            value = check_value(slot.spec, inputs.get(slot.spec.name))
            if slot.slot >= 0:
                work[0, slot.slot] = math.nan if value is None else value
            if slot.codes:
                text = _key_text(slot.spec.type, value)
                for code in slot.codes:
                    work[0, code.slot] = math.nan if text is None else code.index.get(text, -1.0)
        return self._finish_one(key, work, now)

    def _finish_one(self, key, work: np.ndarray, now) -> dict:
        X = self.plan.run(work, _today() if now is None else scoring_day(now))
        score, label, payload = self.decider.decide_one(self.model.predict_matrix(X), work)
        if not math.isfinite(score):
            raise InputError(f"the model gave a non-finite score ({score}) for this row",
                             path="score")
        out = {"model-id": self.model_id, "model-version": self.version, self.key_name: key,
               self.score_name: score, self.decision_name: label}
        if self._payload_name is not None:
            out[self._payload_name] = self.decider.payload_list[payload]
        return out

    def _fill_one_from_view(self, key: int, work: np.ndarray) -> None:
        current = self._view.snapshot()
        rows, found = current.index.find(np.array([key], dtype=np.int64), _ONE_VALID)
        if not found[0]:
            raise NotFoundError(f"{self.key_name} {key!r} not found in the entity store of model "
                                f"{self.model_id!r}", path=f"$.{self.key_name}")
        row = int(rows[0])
        if current.bad[row]:
            raise current.errors[row]
        work[0, self._view.slots] = current.values[row]

    def _lookup_one(self, key) -> dict:
        if key is None:
            raise SchemaError(f"expected `$.{self.key_name}` or `$.inputs`, got neither",
                              path=f"$.{self.key_name}")
        if not self._need_store():
            raise InputError(f"no inputs given and model {self.model_id!r} has no entity store: "
                             "send `$.inputs`", path="$.inputs")
        keys = np.array([key], dtype=np.int64) if type(key) is int else [key]
        table, found = self.store.lookup(keys, self._lookup_columns)
        if not found[0]:
            raise NotFoundError(f"{self.key_name} {key!r} not found in the entity store of model "
                                f"{self.model_id!r}", path=f"$.{self.key_name}")
        row = {name: table.column(column)[0].as_py() for name, column in self._store_columns.items()}
        return row

    # --- warm-up and validation ---------------------------------------------------------------

    def check_sample(self) -> None:
        """Score a generated sample through both paths (compiling every kernel on the way) and
        raise RegistrationError if a row fails or the two paths disagree."""
        for n in _WARM_SIZES:
            values = sample_inputs(self.manifest, n)
            batch = pa.RecordBatch.from_pydict(values)
            out = self.score(batch)
            failed = out.column("error").drop_null()
            if len(failed):
                raise RegistrationError(f"a generated sample row did not score: {failed[0]}",
                                        path="$.inputs")
            if n == 1:
                one = self.score_values(None, {k: v[0] for k, v in values.items()})
                score = out.column(self._names[3])[0].as_py()
                if not math.isclose(one[self._names[3]], score, rel_tol=1e-12, abs_tol=1e-12):
                    raise RegistrationError("the one-row and batch paths disagree on a sample "
                                            f"({one[self._names[3]]} != {score})", path="$")


def _codes(keys: pa.Array | None, key_list: tuple[str, ...]) -> np.ndarray:
    """Category codes: position in `key_list`, -1 unseen, NaN null (see kernels.transforms)."""
    if keys is None:
        return np.full(0, np.nan)
    codes = index_in(keys, key_list).astype(np.float64)
    if keys.null_count:
        codes[keys.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return codes


def _key_text(kind: str, value) -> str | None:
    if value is None:
        return None
    if kind == "string":
        return value
    if kind == "bool":
        return bool_key(value == 1.0)
    return str(int(value))


def _check_key(key, key_type: str, name: str):
    if key_type == "int":
        if type(key) is not int:
            if type(key) is float and key.is_integer():
                return int(key)
            raise InputError(f"expected an int at `$.{name}`, got {key!r}", path=f"$.{name}")
    elif type(key) is not str:
        raise InputError(f"expected a string at `$.{name}`, got {key!r}", path=f"$.{name}")
    return key


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


def open_store(spec, registry_root: Path):
    """Open the manifest's entity store; a relative file path starts at the registry root."""
    from scoreline.engine.data.entities import open_store as _open

    return _open(spec, registry_root)


def validate_version(version_dir, manifest: M.Manifest) -> None:
    """The registration check: load the artifact, compile the plan, score a generated sample
    through both paths. Raises RegistrationError with the reason (and the failing field's path)."""
    try:
        Deployment(manifest, version_dir, store=False)
        store = manifest.entity.store
        if store is not None and hasattr(store, "path"):
            root = Path(version_dir).parent.parent
            path = store.path if os.path.isabs(store.path) else root / store.path
            if not Path(path).exists() and not any(c in str(store.path) for c in "*?["):
                raise NotFoundError(f"the entity store {store.path!r} does not exist (relative "
                                    f"paths start at the registry root {str(root)!r})",
                                    path="$.entity.store.path")
    except RegistrationError:
        raise
    except ScorelineError as exc:
        raise RegistrationError(exc.message, path=exc.path) from exc
    except Exception as exc:  # an artifact or kernel failure we did not foresee: refuse it
        raise RegistrationError(f"{type(exc).__name__}: {exc}") from exc
