"""Compile a manifest's inputs, transforms and model feature mapping into one `Plan`: where every
raw input and transform output lives in a float64 work matrix, and the transform program that
`kernels.transforms.run_plan` runs over it.

The work matrix is F-ordered and its first `num_features` columns are the model's features in
model order, so `work[:, :num_features]` is the feature matrix `predict_matrix` takes, with no
gather and no copy. Raw inputs and transform outputs that feed exactly one feature are written
straight into that feature's column; anything else gets a scratch column after them. Strings
never enter the matrix: the engine maps them to category codes (`code_slots`) first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scoreline.errors import SchemaError
from scoreline.engine.data.days import day_bounds
from scoreline.kernels import transforms as K
from scoreline.registry import manifest as M

__all__ = ["Plan", "InputSlot", "CodeSlot", "compile_plan", "bool_key"]

# Raw input types whose values live in the work matrix as numbers (dates as whole days).
_NUMERIC_TYPES = ("int", "float", "bool")
_DATE_TYPES = ("date", "timestamp")
# Raw input types a vocabulary, one-hot or lookup can key on (the key is the value as a string).
_KEYED_TYPES = ("string", "int", "bool")


def bool_key(value: bool) -> str:
    """The string key of a bool in vocabularies and lookup tables: JSON's spelling."""
    return "true" if value else "false"


@dataclass(frozen=True)
class CodeSlot:
    """A raw input's category code against `keys` (position, -1 unseen, NaN null) in `slot`."""

    keys: tuple[str, ...]
    slot: int
    index: dict  # key -> position, for the one-row path


@dataclass(frozen=True)
class InputSlot:
    """Where one raw input goes: its number (or day) in `slot` (-1: none) and its codes."""

    spec: M.Input
    slot: int
    codes: tuple[CodeSlot, ...]


@dataclass(frozen=True)
class Plan:
    """A compiled feature plan: fill `inputs` into a work matrix of `width` columns, run `ops`."""

    width: int
    num_features: int
    inputs: tuple[InputSlot, ...]
    ops: np.ndarray  # int64 (steps, 6): opcode, source, second source, destination, p0, p1
    params: np.ndarray  # float64
    # For rule tables and reason codes (see _origins): numeric column name -> its work slot
    # (valid after `run`), and per model feature the raw input it is built from (the column's
    # own name when it is built from several).
    columns: dict = None
    feature_inputs: tuple = ()

    def new_work(self, n: int) -> np.ndarray:
        """A fresh work matrix for `n` rows (F order; see the module docstring)."""
        return np.empty((n, self.width), dtype=np.float64, order="F")

    def run(self, work: np.ndarray, today: int) -> np.ndarray:
        """Run the transforms over a filled work matrix; return the feature matrix (a view)."""
        K.run_plan(self.ops, self.params, today, work)
        return work[:, : self.num_features]


@dataclass
class _Column:
    kind: str  # "number", "date", "keyed-string" (no slot) or "keyed-number" (int/bool input)
    slot: int
    raw: str | None  # the raw input's name, for keyed columns


class _Builder:
    def __init__(self, num_features: int) -> None:
        self.width = num_features
        self.ops: list[tuple[int, int, int, int, int, int]] = []
        self.params: list[float] = []

    def scratch(self, count: int = 1) -> int:
        first = self.width
        self.width += count
        return first

    def op(self, code: int, a: int, dst: int, params=(), b: int = 0, count: int | None = None) -> None:
        p0 = len(self.params)
        self.params.extend(float(p) for p in params)
        self.ops.append((code, a, b, dst, p0, len(params) if count is None else count))


def compile_plan(manifest: M.Manifest, feature_names, categories) -> Plan:
    """Compile `manifest` for a model with `feature_names` (in model order) and `categories`
    (feature index -> category values, as `model.categories`).

    Raises SchemaError, with the path of the offending manifest field, when a transform reads a
    column of the wrong kind, a parameter is unusable (std 0, unsorted edges, ...), or a model
    feature maps from no column.
    """
    feature_names = tuple(feature_names)
    mapping = dict(manifest.model.features)
    unknown = sorted(set(mapping) - set(feature_names))
    if unknown:
        raise SchemaError(
            f"model.features names {unknown[0]!r}, which the model does not have "
            f"(its features: {', '.join(feature_names)})",
            path=f"$.model.features.{unknown[0]}",
        )
    feature_column = [mapping.get(f, f) for f in feature_names]
    # The first feature fed by a column gets the column written straight into its slot.
    preferred: dict[str, int] = {}
    for j, column in enumerate(feature_column):
        preferred.setdefault(column, j)

    b = _Builder(len(feature_names))
    columns: dict[str, _Column] = {}
    code_slots: dict[str, dict[tuple, CodeSlot]] = {}

    def slot_for(name: str) -> int:
        j = preferred.get(name)
        return b.scratch() if j is None else j

    def codes_of(name: str, keys: tuple[str, ...]) -> int:
        per_input = code_slots.setdefault(name, {})
        if keys not in per_input:
            per_input[keys] = CodeSlot(keys, b.scratch(), {k: i for i, k in enumerate(keys)})
        return per_input[keys].slot

    for i, spec in enumerate(manifest.inputs):
        _check_input(spec, f"$.inputs[{i}]")
        if spec.type == "string":
            columns[spec.name] = _Column("keyed-string", -1, spec.name)
        elif spec.type in _DATE_TYPES:
            columns[spec.name] = _Column("date", slot_for(spec.name), None)
        else:
            columns[spec.name] = _Column("keyed-number", slot_for(spec.name), spec.name)

    for i, t in enumerate(manifest.transforms):
        _compile_transform(i, t, b, columns, slot_for, codes_of)
    origins = _origins(manifest)

    for j, (feature, column) in enumerate(zip(feature_names, feature_column)):
        where = f"$.model.features.{feature}" if feature in mapping else "$.model"
        col = columns.get(column)
        if col is None:
            raise SchemaError(
                f"model feature {feature!r} maps from {column!r}, which is neither an input nor a "
                "transform output (map it in model.features)",
                path=where,
            )
        if col.kind == "keyed-string":
            cats = categories.get(j)
            if cats is None:
                raise SchemaError(
                    f"model feature {feature!r} is numeric, but {column!r} is a string input: "
                    "map it through a vocabulary or lookup transform",
                    path=where,
                )
            keys = tuple(str(c) for c in cats)
            # LightGBM's pandas path: the category's position; unseen or null is missing.
            b.op(K.OP_GATHER, codes_of(column, keys), j, (math.nan, *range(len(keys))))
        elif col.slot != j:
            b.op(K.OP_COPY, col.slot, j)

    inputs = []
    for spec in manifest.inputs:
        col = columns[spec.name]
        codes = tuple(code_slots.get(spec.name, {}).values())
        inputs.append(InputSlot(spec, col.slot, codes))
    ops = np.array(b.ops, dtype=np.int64).reshape(-1, 6)
    numeric = {name: col.slot for name, col in columns.items() if col.kind != "keyed-string"}
    feature_inputs = tuple(next(iter(origins[c])) if len(origins.get(c, ())) == 1 else c for c in feature_column)
    return Plan(b.width, len(feature_names), tuple(inputs), ops,
                np.array(b.params, dtype=np.float64), numeric, feature_inputs)


def _origins(manifest: M.Manifest) -> dict[str, frozenset]:
    """Column name -> the raw inputs it is computed from (an input: itself; a transform output:
    its sources' inputs), so a feature's contribution can be given to the input it came from."""
    origins = {spec.name: frozenset((spec.name,)) for spec in manifest.inputs}
    for t in manifest.transforms:
        sources = (t.numerator, t.denominator) if isinstance(t, M.Ratio) else (t.input,)
        found = frozenset().union(*(origins.get(name, frozenset()) for name in sources))
        names = [f"{t.output}={c}" for c in t.categories] if isinstance(t, M.OneHot) else [t.output]
        for name in names:
            origins[name] = found
    return origins


def _check_input(spec: M.Input, path: str) -> None:
    """Input settings that its type cannot honour are refused rather than silently ignored."""
    if spec.allowed is not None and spec.type in _DATE_TYPES:
        raise SchemaError(f"input {spec.name!r}: allowed values apply to int, float, string and "
                          "bool inputs, not to dates", path=f"{path}.allowed")
    if (spec.minimum is not None or spec.maximum is not None) and spec.type not in ("int", "float"):
        raise SchemaError(f"input {spec.name!r}: minimum and maximum apply to int and float "
                          f"inputs, not to {spec.type}", path=f"{path}.minimum")
    if (spec.earliest is not None or spec.latest is not None) and spec.type not in _DATE_TYPES:
        raise SchemaError(f"input {spec.name!r}: earliest and latest apply to date and timestamp "
                          f"inputs, not to {spec.type}", path=f"{path}.earliest")
    if spec.type in _DATE_TYPES:
        day_bounds(spec, path)  # refuses a bound that is not a day (or "today" as the latest)
    if spec.minimum is not None and spec.maximum is not None and spec.minimum > spec.maximum:
        raise SchemaError(f"input {spec.name!r}: minimum {spec.minimum} is above maximum "
                          f"{spec.maximum}", path=f"{path}.minimum")


def _compile_transform(i, t, b: _Builder, columns, slot_for, codes_of) -> None:
    path = f"$.transforms[{i}]"
    tag = type(t).__struct_config__.tag

    def source(name: str, kinds: tuple[str, ...], expected: str) -> _Column:
        col = columns.get(name)
        if col is None:
            raise SchemaError(f"{tag} reads {name!r}, which is neither an input nor an earlier "
                              "transform output", path=path)
        if col.kind not in kinds:
            raise SchemaError(f"{tag} needs {expected}, but {name!r} is {_describe(col)}",
                              path=path)
        return col

    def output(name: str, kind: str = "number") -> int:
        if name in columns:
            raise SchemaError(f"{tag} output {name!r} redefines an existing column; give it a "
                              "new name", path=f"{path}.output")
        slot = slot_for(name)
        columns[name] = _Column(kind, slot, None)
        return slot

    def check(ok: bool, message: str, field: str) -> None:
        if not ok:
            raise SchemaError(f"{tag}: {message}", path=f"{path}.{field}")

    numbers = ("number", "keyed-number")
    if isinstance(t, M.Passthrough):
        col = source(t.input, ("number", "keyed-number", "date"), "a number or a date")
        b.op(K.OP_COPY, col.slot, output(t.output))
    elif isinstance(t, (M.AgeYears, M.DaysSince)):
        col = source(t.input, ("date",), "a date or timestamp input")
        code = K.OP_AGE_YEARS if isinstance(t, M.AgeYears) else K.OP_DAYS_SINCE
        b.op(code, col.slot, output(t.output))
    elif isinstance(t, (M.Vocabulary, M.OneHot, M.Lookup)):
        col = source(t.input, ("keyed-string", "keyed-number"), "a string, int or bool input")
        if isinstance(t, M.Lookup):
            keys = tuple(t.table)
            check(all(math.isfinite(v) for v in t.table.values()), "values must be finite", "table")
            unseen = math.nan if t.default is None else t.default
            table = list(t.table.values())
        else:
            keys = tuple(t.vocabulary if isinstance(t, M.Vocabulary) else t.categories)
            field = "vocabulary" if isinstance(t, M.Vocabulary) else "categories"
            check(len(set(keys)) == len(keys), "duplicate entries", field)
            check(len(keys) > 0, "needs at least one entry", field)
            unseen = math.nan if not isinstance(t, M.Vocabulary) or t.fallback is None else t.fallback
            table = range(len(keys))
        codes = codes_of(col.raw, keys)
        if isinstance(t, M.OneHot):
            names = [f"{t.output}={c}" for c in keys]
            first = b.scratch(len(keys))
            for k, name in enumerate(names):
                if name in columns:
                    raise SchemaError(f"one-hot output {name!r} redefines an existing column",
                                      path=f"{path}.output")
                columns[name] = _Column("number", first + k, None)
            b.op(K.OP_ONE_HOT, codes, first, (), count=len(keys))
        else:
            b.op(K.OP_GATHER, codes, output(t.output), (unseen, *table))
    elif isinstance(t, M.Ratio):
        num = source(t.numerator, numbers, "numbers")
        den = source(t.denominator, numbers, "numbers")
        b.op(K.OP_RATIO, num.slot, output(t.output), b=den.slot)
    else:
        col = source(t.input, numbers, "a number")
        if isinstance(t, M.Standardize):
            check(math.isfinite(t.mean), "mean must be finite", "mean")
            check(math.isfinite(t.std) and t.std > 0, "std must be finite and > 0", "std")
            b.op(K.OP_STANDARDIZE, col.slot, output(t.output), (t.mean, t.std))
        elif isinstance(t, M.MinMax):
            check(math.isfinite(t.min) and math.isfinite(t.max) and t.max > t.min,
                  "min and max must be finite with max > min", "max")
            b.op(K.OP_MIN_MAX, col.slot, output(t.output), (t.min, t.max))
        elif isinstance(t, M.Log1p):
            b.op(K.OP_LOG1P, col.slot, output(t.output))
        elif isinstance(t, M.Clip):
            lo = -math.inf if t.lower is None else t.lower
            hi = math.inf if t.upper is None else t.upper
            check(not (math.isnan(lo) or math.isnan(hi)) and lo <= hi, "needs lower <= upper",
                  "upper")
            b.op(K.OP_CLIP, col.slot, output(t.output), (lo, hi))
        elif isinstance(t, M.Bucketize):
            edges = list(t.edges)
            check(len(edges) > 0 and all(math.isfinite(e) for e in edges)
                  and edges == sorted(edges), "edges must be finite and ascending", "edges")
            b.op(K.OP_BUCKETIZE, col.slot, output(t.output), edges)
        elif isinstance(t, M.FillMissing):
            b.op(K.OP_FILL_MISSING, col.slot, output(t.output), (t.value,))
        else:
            raise SchemaError(f"transform kind {tag!r} is not supported", path=path)


def _describe(col: _Column) -> str:
    return {
        "number": "a number",
        "date": "a date",
        "keyed-string": "a string input",
        "keyed-number": "a number input",
    }[col.kind]
