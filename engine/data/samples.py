"""Generated inline inputs for a manifest: valid values of every declared input, used to warm a
deployment's kernels and to check a version end to end when it is registered; and edge rows
(bounds, zero, every allowed value and category, missing values) for its golden rows."""

from __future__ import annotations

import datetime as dt
import math

from scoreline.registry import manifest as M

__all__ = ["sample_inputs", "edge_rows"]

_FRACTIONS = (0.5, 0.25, 0.75, 0.1, 0.9, 0.0, 1.0)
# Per input, at most this many values of a long allowed list or vocabulary go into edge rows.
_MAX_CATEGORIES = 16
_EDGE_DATES = ("1900-01-01", "1970-01-01", "2000-02-29", "2038-01-19")
_EDGE_TIMES = ("1970-01-01T00:00:00", "2000-02-29T23:59:59", "2038-01-19T03:14:07")
_UNSEEN = "unseen-category"


def sample_inputs(manifest: M.Manifest, n: int) -> dict[str, list]:
    """`n` rows of valid raw inputs by name (Python values: numbers, strings, bools, ISO dates)."""
    keyed = _keys_read_by_transforms(manifest)
    return {spec.name: [_value(spec, i, keyed.get(spec.name)) for i in range(n)]
            for spec in manifest.inputs}


def _keys_read_by_transforms(manifest: M.Manifest) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for t in manifest.transforms:
        if isinstance(t, M.Vocabulary):
            keys.setdefault(t.input, []).extend(t.vocabulary)
        elif isinstance(t, M.OneHot):
            keys.setdefault(t.input, []).extend(t.categories)
        elif isinstance(t, M.Lookup):
            keys.setdefault(t.input, []).extend(t.table)
    return keys


def _value(spec: M.Input, i: int, keys: list[str] | None):
    if spec.allowed:
        return spec.allowed[i % len(spec.allowed)]
    kind = spec.type
    if kind == "string":
        return keys[i % len(keys)] if keys else f"sample-{i % 3}"
    if kind == "bool":
        return i % 2 == 0
    if kind == "date":
        return (dt.date(1950, 1, 1) + dt.timedelta(days=(i * 3659) % 20000)).isoformat()
    if kind == "timestamp":
        return (dt.datetime(2020, 1, 1) + dt.timedelta(minutes=i * 977)).isoformat()
    lo = spec.minimum
    hi = spec.maximum
    if lo is None and hi is None:
        lo, hi = 0.0, 1000.0
    elif lo is None:
        lo = hi - 1000.0
    elif hi is None:
        hi = lo + 1000.0
    value = lo + (hi - lo) * _FRACTIONS[i % len(_FRACTIONS)]
    if kind == "int":
        value = min(max(math.ceil(lo), round(value)), math.floor(hi))
        return int(value)
    return float(value)


def edge_rows(manifest: M.Manifest, limit: int = 64) -> list[dict]:
    """Rows of raw inputs by name: the warm-up sample's rows, then rows that each move one input of
    the first sample row to an edge value (its bounds, zero, each allowed value or category, an
    unseen category, a missing value where the input may be missing), taken in turns across the
    inputs up to `limit` rows. Some may be refused by the model's checks; the caller drops them."""
    keyed = _keys_read_by_transforms(manifest)
    sample = sample_inputs(manifest, len(_FRACTIONS))
    rows = [{name: values[i] for name, values in sample.items()} for i in range(len(_FRACTIONS))]
    base = rows[0]
    per_input = [[{**base, spec.name: v} for v in _edges(spec, keyed.get(spec.name))]
                 for spec in manifest.inputs]
    for turn in range(max(map(len, per_input), default=0)):
        rows += [edges[turn] for edges in per_input if turn < len(edges)]
    seen: set = set()
    unique = []
    for row in rows:
        key = tuple(sorted(row.items()))  # names are unique, so values are never compared
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique[:limit]


def _edges(spec: M.Input, keys: list[str] | None) -> list:
    values: list = []
    if spec.allowed:
        values += list(spec.allowed[:_MAX_CATEGORIES])
    elif spec.type == "string":
        values += [*(keys or [])[:_MAX_CATEGORIES], _UNSEEN]
    elif spec.type == "bool":
        values += [True, False]
    elif spec.type in ("date", "timestamp"):
        # the declared bounds ("today" is left out: golden rows are scored on a fixed day)
        bounds = [d for d in (spec.earliest, spec.latest) if d and d != "today"]
        suffix = "T00:00:00" if spec.type == "timestamp" else ""
        values += [d + suffix for d in bounds] + list(_EDGE_DATES if spec.type == "date" else _EDGE_TIMES)
    else:
        lo, hi = spec.minimum, spec.maximum
        values += [v for v in (lo, hi) if v is not None]
        if (lo is None or lo <= 0) and (hi is None or hi >= 0):
            values.append(0)
        if lo is None and hi is None:
            values += [-1, 1, -1e6, 1e6]
        if spec.type == "int":
            values = [int(math.ceil(v)) if v == lo else int(math.floor(v)) for v in values]
        else:
            values = [float(v) for v in values] + ([0.5] if lo is None and hi is None else [])
    if not spec.required or spec.default is not None:
        values.append(None)
    return values
