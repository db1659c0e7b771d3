"""Generated inline inputs for a manifest: valid values of every declared input, used to warm a
deployment's kernels and to check a version end to end when it is registered."""

from __future__ import annotations

import datetime as dt
import math

from scoreline.registry import manifest as M

__all__ = ["sample_inputs"]

_FRACTIONS = (0.5, 0.25, 0.75, 0.1, 0.9, 0.0, 1.0)


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
