"""Reference profiles: per tracked input and for the score, the bins a version's data fell into
(quantile bins for numbers, one bin per category plus "unseen", and a missing bin), with the
share of rows in each. Kept with the version (`profile.json`) and compared against while serving.

Inputs are tracked as the deployment sees them in its work matrix, after checks and the store's
conversion: a number (a date as days since 1970) where the input has a numeric slot, else its
category code (position in the vocabulary, -1 unseen, NaN missing). So the reference and the
live counts are the same quantity, made by the same code.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import msgspec
import numpy as np

from scoreline.errors import SchemaError

__all__ = ["Column", "Profile", "tracked_columns", "build_profile", "load_profile",
           "save_profile", "PROFILE_FILE", "SCORE"]

PROFILE_FILE = "profile.json"
_EPOCH = dt.date(1970, 1, 1)
SCORE = "score"  # the name the score's column has in a profile
_QUANTILES = np.linspace(0.1, 0.9, 9)  # deciles: ten bins where the reference has ten values


class Column(msgspec.Struct, frozen=True, rename="kebab"):
    """One tracked quantity: bin edges (interior, ascending; `searchsorted(edges, v, 'right')`
    is the bin), a label per bin, the reference share per bin with the missing share last."""

    name: str
    kind: str                    # "number" | "date" | "category" | "score"
    slot: int                    # work-matrix column (-1 for the score)
    edges: list[float]
    labels: list[str]
    shares: list[float]
    minimum: float | None = None
    maximum: float | None = None

    @property
    def bins(self) -> int:
        """Bins including the missing one."""
        return len(self.edges) + 2


class Profile(msgspec.Struct, frozen=True, rename="kebab"):
    model_id: str
    version: int
    rows: int
    source: str                  # "sample" (rows given) or "store" (drawn from the entity store)
    columns: list[Column]


def tracked_columns(plan, manifest) -> list[tuple[str, str, int, tuple, float | None, float | None]]:
    """(name, kind, work slot, category keys, minimum, maximum) of every input a plan fills."""
    specs = {i.name: i for i in manifest.inputs}
    out = []
    for slot in plan.inputs:
        spec = specs[slot.spec.name]
        if slot.slot >= 0:
            kind = "date" if spec.type == "date" else "number"  # a date's number: days since 1970
            out.append((spec.name, kind, slot.slot, (), spec.minimum, spec.maximum))
        elif slot.codes:
            code = slot.codes[0]
            out.append((spec.name, "category", code.slot, tuple(code.keys), None, None))
    return out


def build_profile(model_id: str, version: int, tracked, values: np.ndarray, score: np.ndarray,
                  source: str) -> Profile:
    """The profile of `values` (rows x tracked columns, as `tracked_columns` orders them) and
    `score` (one per row; rows that failed to score carry NaN)."""
    n = values.shape[0]
    if n == 0:
        raise SchemaError("a reference profile needs at least one row", path="sample")
    columns = []
    for j, (name, kind, slot, keys, lo, hi) in enumerate(tracked):
        columns.append(_column(name, kind, slot, keys, values[:, j], lo, hi))
    columns.append(_column(SCORE, "score", -1, (), score, None, None))
    return Profile(model_id, int(version), int(n), source, columns)


def _column(name, kind, slot, keys, x: np.ndarray, lo, hi) -> Column:
    if kind == "category":
        # code -1 (unseen) -> bin 0, code k -> bin k + 1
        edges = [k - 0.5 for k in range(len(keys))]
        labels = ["(unseen)", *keys]
    else:
        finite = x[np.isfinite(x)]
        edges = sorted(set(np.quantile(finite, _QUANTILES).tolist())) if len(finite) else []
        labels = _range_labels(edges, kind)
    counts = bin_counts(x, np.asarray(edges, dtype=np.float64))
    shares = (counts / max(len(x), 1)).tolist()
    return Column(name, kind, slot, [float(e) for e in edges], [*labels, "(missing)"], shares,
                  lo, hi)


def bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows per bin: len(edges) + 1 value bins, then the missing (NaN) bin."""
    index = np.searchsorted(edges, x, side="right")
    index[np.isnan(x)] = len(edges) + 1
    return np.bincount(index, minlength=len(edges) + 2)


def _range_labels(edges: list[float], kind: str) -> list[str]:
    if not edges:
        return ["all"]
    shown = [_day(e) if kind == "date" else _short(e) for e in edges]
    return [f"< {shown[0]}", *(f"{a}..{b}" for a, b in zip(shown, shown[1:])), f">= {shown[-1]}"]


def _day(v: float) -> str:
    return (_EPOCH + dt.timedelta(days=int(v))).isoformat()[:7] if abs(v) < 3e6 else _short(v)


def _short(v: float) -> str:
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.3g}"


_decode = msgspec.json.Decoder(Profile).decode


def save_profile(profile: Profile, version_dir) -> Path:
    """Write `profile.json` into a version folder (during registration, before it is visible)."""
    path = Path(version_dir) / PROFILE_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(profile), indent=1))
    return path


def load_profile(version_dir) -> Profile | None:
    """The version's profile, or None when it was registered without one."""
    path = Path(version_dir) / PROFILE_FILE
    try:
        return _decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SchemaError(f"{path} is not a valid profile: {exc}", path=str(path)) from None
