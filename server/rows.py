"""Request rows -> Arrow: checks each JSON value against the manifest's declared type, then builds the
RecordBatch that `Deployment.score` reads (key column and raw-input columns, by manifest name).

Values are checked per request, before batching, so one client's bad value is that client's 422 and
never fails its batch-mates. Types: int -> int64, float -> float64, string -> utf8, bool -> bool,
date ("YYYY-MM-DD") -> date32, timestamp (ISO 8601; naive means UTC) -> timestamp[us, UTC].
A null (or absent) input is missing: the engine applies the manifest's default or reports the row.
"""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

from scoreline.errors import SchemaError

__all__ = ["Rows", "RowShape", "ARROW_TYPES", "check_model_ref", "MODEL_ID_PATTERN", "ALIAS_PATTERN"]

ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_INT64 = (-(2**63), 2**63 - 1)
# The registry's own rules (registry/repository.py): a model id is a folder name that can never
# be "." or ".." or hidden, so no request can reach outside the registry; an alias starts with a
# letter. Checked here so a bad name is the client's 422, never a lookup.
MODEL_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,127}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9._-]{0,63}|[0-9]{1,18}"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


class Rows:
    """Some rows of one request, column-wise: keys, raw inputs (only the names given) and request ids.

    `request` is set for a one-entity call: the checked request as the engine's one-row path
    (`Engine.score`) takes it, used when this request ends up alone in its batch; `echo_id`: that
    call's client sent its own request id, which its answer repeats.
    """

    __slots__ = ("keys", "inputs", "request_ids", "n", "request", "echo_id")

    def __init__(self, keys: list, inputs: dict[str, list] | None, request_ids: list[str],
                 request: dict | None = None, echo_id: bool = False) -> None:
        self.keys = keys
        self.inputs = inputs
        self.request_ids = request_ids
        self.n = len(keys)
        self.request = request
        self.echo_id = echo_id


def check_model_ref(model_id: object, version: object, *, path: str = "$") -> tuple[str, int | str | None]:
    """A model id and version/alias as the engine takes them; anything else is a 422 naming the field."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise SchemaError(
            f"expected a model id (1-128 lowercase letters, digits, '.', '_', '-', starting with a letter "
            f"or digit) at `{path}.model-id`, got {_show(model_id)}", path=f"{path}.model-id")
    if version is None or (type(version) is int and 1 <= version < 2**63):
        return model_id, version
    if isinstance(version, str) and _ALIAS.fullmatch(version):
        if not version.isdigit():
            return model_id, version
        if int(version) >= 1:
            return model_id, int(version)
    raise SchemaError(
        f"expected a version number (>= 1) or an alias at `{path}.model-version`, got {_show(version)}",
        path=f"{path}.model-version")


class RowShape:
    """How one deployment's requests look: its key, its raw inputs and their types."""

    def __init__(self, deployment) -> None:
        manifest = deployment.manifest
        self.key = deployment.key_name
        self.key_type = "int" if manifest.entity.key_type == "int" else "string"
        self.input_types = {i.name: i.type for i in manifest.inputs}
        self.input_names = tuple(deployment.input_names)
        self.top_level = frozenset(("model-id", "model-version", "request-id", "inputs", self.key))
        self.row_level = frozenset(("request-id", "inputs", self.key))

    def parse_request(self, body: dict, request_id: str) -> Rows:
        """One `/v1/score` body (already known to be an object) as a one-row Rows."""
        key, inputs, rid = self._parse(body, "$", self.top_level, request_id)
        one = {"request-id": rid}
        if key is not None:
            one[self.key] = key
        if inputs:
            one["inputs"] = body["inputs"]  # as sent (checked above): the engine parses dates itself
        return Rows([key], None if inputs is None else {k: [v] for k, v in inputs.items()}, [rid], one,
                    "request-id" in body)

    def parse_rows(self, rows: object, path: str, make_id) -> Rows:
        """The `rows` list of a `/v1/score/batch` body; `make_id()` supplies absent request ids."""
        if not isinstance(rows, list):
            raise SchemaError(f"expected an array of rows at `{path}`, got {_show(rows)}", path=path)
        keys: list = []
        ids: list[str] = []
        columns: dict[str, list] = {}
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            if not isinstance(row, dict):
                raise SchemaError(f"expected an object at `{where}`, got {_show(row)}", path=where)
            key, inputs, rid = self._parse(row, where, self.row_level, None)
            keys.append(key)
            ids.append(rid if rid is not None else make_id())
            if inputs:
                for name, value in inputs.items():
                    column = columns.get(name)
                    if column is None:
                        column = columns[name] = [None] * i
                    column.append(value)
            for column in columns.values():
                if len(column) < len(keys):
                    column.append(None)
        return Rows(keys, columns or None, ids)

    def parse_columns(self, columns: dict[str, list], n: int, request_ids: list[str], paths: dict[str, str]) -> Rows:
        """Column lists by name (the v2 protocol's tensors) as Rows; `paths` names each column's field."""
        keys = [None] * n
        inputs: dict[str, list] = {}
        for name, values in columns.items():
            where = paths[name]
            if name == self.key:
                keys = [self._key(v, f"{where}[{j}]") for j, v in enumerate(values)]
            elif name in self.input_types:
                kind = self.input_types[name]
                inputs[name] = [_value(v, kind, f"{where}[{j}]") for j, v in enumerate(values)]
            else:
                raise SchemaError(
                    f"unknown input {name!r} at `{where}`; expected one of {self.known_names()}", path=where)
        return Rows(keys, inputs or None, request_ids)

    def known_names(self) -> list[str]:
        return [self.key, *self.input_names]

    def to_batch(self, parts: list[Rows]) -> tuple[pa.RecordBatch, list[str]]:
        """The RecordBatch of several requests' rows, in order, and their request ids."""
        if len(parts) == 1:
            keys, ids = parts[0].keys, parts[0].request_ids
        else:
            keys, ids = [], []
            for part in parts:
                keys.extend(part.keys)
                ids.extend(part.request_ids)
        arrays = [pa.array(keys, type=ARROW_TYPES[self.key_type])]
        names = [self.key]
        given = {name for part in parts if part.inputs for name in part.inputs}
        for name in self.input_names:  # manifest order, so batches of one deployment look alike
            if name not in given:
                continue
            column: list = []
            for part in parts:
                values = part.inputs.get(name) if part.inputs else None
                column.extend(values if values is not None else [None] * part.n)
            arrays.append(pa.array(column, type=ARROW_TYPES[self.input_types[name]]))
            names.append(name)
        return pa.RecordBatch.from_arrays(arrays, names=names), ids

    # -- checks ----------------------------------------------------------------------------------

    def _parse(self, body: dict, path: str, allowed: frozenset, request_id: str | None):
        for field in body:
            if field not in allowed:
                raise SchemaError(
                    f"unknown field `{path}.{field}`; expected {sorted(allowed)}", path=f"{path}.{field}")
        rid = body.get("request-id")
        if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= 200):
            raise SchemaError(
                f"expected a request id (a string of 1 to 200 characters) at `{path}.request-id`, got {_show(rid)}",
                path=f"{path}.request-id")
        key = body.get(self.key)
        if key is not None:
            key = self._key(key, f"{path}.{self.key}")
        raw = body.get("inputs")
        inputs = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise SchemaError(f"expected an object at `{path}.inputs`, got {_show(raw)}", path=f"{path}.inputs")
            inputs = {}
            for name, value in raw.items():
                kind = self.input_types.get(name)
                if kind is None:
                    raise SchemaError(
                        f"unknown input `{path}.inputs.{name}`; expected one of {list(self.input_names)}",
                        path=f"{path}.inputs.{name}")
                inputs[name] = _value(value, kind, f"{path}.inputs.{name}")
        if key is None and not inputs:
            raise SchemaError(
                f"expected `{path}.{self.key}` (the entity key) or `{path}.inputs` (the raw inputs)", path=path)
        return key, inputs, rid if rid is not None else request_id

    def _key(self, value: object, path: str):
        if self.key_type == "int":
            if type(value) is int and _INT64[0] <= value <= _INT64[1]:
                return value
            raise SchemaError(f"expected an integer key at `{path}`, got {_show(value)}", path=path)
        if isinstance(value, str) and value:
            return value
        raise SchemaError(f"expected a non-empty string key at `{path}`, got {_show(value)}", path=path)


def _value(value: object, kind: str, path: str):
    """One raw input value checked (and converted) for its declared type; None stays missing."""
    if value is None:
        return None
    t = type(value)
    if kind == "float":
        if t is float or (t is int and abs(value) < 2**63):
            return value
    elif kind == "int":
        if t is int and _INT64[0] <= value <= _INT64[1]:
            return value
    elif kind == "string":
        if t is str:
            return value
    elif kind == "bool":
        if t is bool:
            return value
    elif kind == "date" and t is str:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    elif kind == "timestamp" and t is str:
        try:
            stamp = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return stamp.replace(tzinfo=dt.timezone.utc) if stamp.tzinfo is None else stamp.astimezone(dt.timezone.utc)
    expected = {"date": "a date (YYYY-MM-DD)", "timestamp": "an ISO 8601 timestamp", "int": "an integer",
                "float": "a number", "string": "a string", "bool": "true or false"}[kind]
    raise SchemaError(f"expected {expected} at `{path}`, got {_show(value)}", path=path)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
