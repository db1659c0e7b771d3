"""A deployment's request schema, built once from its manifest: the shape of a JSON request (one
entity, a list of rows, v2 tensors by name) checked and turned into `RowBatch`, raw values by
input name. Only the shape is checked here (fields, the key's type, the inputs object, input
names); every value rule (types, dates, ranges, allowed values) belongs to engine/data/fields.py
and is applied row by row by the pipeline, so a bad value is that row's error on every door.
"""

from __future__ import annotations

import pyarrow as pa

from scoreline.errors import SchemaError
from scoreline.registry import manifest as M

__all__ = ["RowBatch", "RequestSchema", "ARROW_TYPES"]

# The Arrow type of each manifest input type (the Arrow door casts client columns to these).
ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_INT64 = (-(2**63), 2**63 - 1)
_MAX_EXPLAIN = 20  # the most reasons a request may ask for


class RowBatch:
    """Rows of raw request values, column-wise: `keys` (None: no key), `inputs` (input name ->
    one value per row, None where not given; None when no row sent inputs) and request ids;
    `explain`: reasons asked per row (None where not asked; None when no row asked)."""

    __slots__ = ("keys", "inputs", "request_ids", "n", "explain")

    def __init__(self, keys: list, inputs: dict[str, list] | None, request_ids: list,
                 explain: list | None = None) -> None:
        self.keys = keys
        self.inputs = inputs
        self.request_ids = request_ids
        self.n = len(keys)
        self.explain = explain

    @staticmethod
    def concat(parts: list[RowBatch]) -> RowBatch:
        """Several requests' rows as one batch, in order."""
        if len(parts) == 1:
            return parts[0]
        keys: list = []
        ids: list = []
        explain = None
        if any(part.explain is not None for part in parts):
            explain = [k for part in parts for k in (part.explain or [None] * part.n)]
        names = {name: None for part in parts if part.inputs for name in part.inputs}
        inputs: dict[str, list] | None = {name: [] for name in names} or None
        for part in parts:
            keys.extend(part.keys)
            ids.extend(part.request_ids)
            if inputs is not None:
                for name, column in inputs.items():
                    values = part.inputs.get(name) if part.inputs else None
                    column.extend(values if values is not None else [None] * part.n)
        return RowBatch(keys, inputs, ids, explain)


class RequestSchema:
    """The request shape of one manifest: its key, its raw input names and types."""

    def __init__(self, manifest: M.Manifest) -> None:
        self.key = manifest.entity.key
        self.key_type = "int" if manifest.entity.key_type == "int" else "string"
        self.input_types = {i.name: i.type for i in manifest.inputs}
        self.input_names = tuple(i.name for i in manifest.inputs)
        self.top_level = frozenset(("model-id", "model-version", "request-id", "inputs", "explain", self.key))
        self.row_level = frozenset(("request-id", "inputs", "explain", self.key))
        self.explains = manifest.explain is not None  # whether `explain` may be asked

    def known_names(self) -> list[str]:
        return [self.key, *self.input_names]

    def parse_request(self, body: dict, request_id=None, *, strict: bool = True) -> RowBatch:
        """One `/v1/score` body (an object) as a one-row batch; `request_id` when it sends none.
        `strict=False` ignores inputs the manifest does not name (the Python API's habit, like
        the extra columns of an Arrow batch) instead of refusing them."""
        key, inputs, rid = self._parse(body, "$", self.top_level, strict)
        explain = self._explain(body, "$")
        return RowBatch([key], None if inputs is None else {k: [v] for k, v in inputs.items()},
                        [rid if rid is not None else request_id], None if explain is None else [explain])

    def parse_rows(self, rows: object, path: str, make_id) -> RowBatch:
        """The `rows` list of a `/v1/score/batch` body; `make_id()` supplies absent request ids."""
        if not isinstance(rows, list):
            raise SchemaError(f"expected an array of rows at `{path}`, got {_show(rows)}", path=path)
        keys: list = []
        ids: list = []
        columns: dict[str, list] = {}
        explain: list = []
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            if not isinstance(row, dict):
                raise SchemaError(f"expected an object at `{where}`, got {_show(row)}", path=where)
            key, inputs, rid = self._parse(row, where, self.row_level, True)
            explain.append(self._explain(row, where))
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
        return RowBatch(keys, columns or None, ids, explain if any(k is not None for k in explain) else None)

    def _explain(self, body: dict, path: str) -> int | None:
        return self.check_explain(body.get("explain"), f"{path}.explain")

    def check_explain(self, k: object, path: str) -> int | None:
        """A request's `explain` (how many reasons to give) at `path`, checked; None when absent."""
        if k is None:
            return None
        if not self.explains:
            raise SchemaError("this model gives no reasons: its manifest has no `explain` section", path=path)
        if type(k) is not int or not 0 <= k <= _MAX_EXPLAIN:
            raise SchemaError(f"expected an integer from 0 to {_MAX_EXPLAIN} at `{path}`, got {_show(k)}", path=path)
        return k

    def parse_columns(self, columns: dict[str, list], n: int, request_ids: list,
                      paths: dict[str, str]) -> RowBatch:
        """Column lists by name (the v2 protocol's tensors); `paths` names each column's field."""
        keys: list = [None] * n
        inputs: dict[str, list] = {}
        for name, values in columns.items():
            where = paths[name]
            if name == self.key:
                keys = [self._key(v, f"{where}[{j}]") for j, v in enumerate(values)]
            elif name in self.input_types:
                inputs[name] = values
            else:
                raise SchemaError(f"unknown input {name!r} at `{where}`; expected one of "
                                  f"{self.known_names()}", path=where)
        return RowBatch(keys, inputs or None, request_ids)

    def _parse(self, body: dict, path: str, allowed: frozenset, strict: bool):
        for field in body:
            if field not in allowed:
                raise SchemaError(f"unknown field `{path}.{field}`; expected {sorted(allowed)}",
                                  path=f"{path}.{field}")
        rid = body.get("request-id")
        if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= 200):
            raise SchemaError(f"expected a request id (a string of 1 to 200 characters) at "
                              f"`{path}.request-id`, got {_show(rid)}", path=f"{path}.request-id")
        key = body.get(self.key)
        if key is not None:
            key = self._key(key, f"{path}.{self.key}")
        inputs = body.get("inputs")
        if inputs is not None:
            if type(inputs) is not dict:
                raise SchemaError(f"expected an object at `{path}.inputs`, got {_show(inputs)}",
                                  path=f"{path}.inputs")
            for name in inputs:
                if name not in self.input_types:
                    if not strict:
                        inputs = {k: v for k, v in inputs.items() if k in self.input_types}
                        break
                    raise SchemaError(f"unknown input `{path}.inputs.{name}`; expected one of "
                                      f"{list(self.input_names)}", path=f"{path}.inputs.{name}")
        if key is None and not inputs:
            raise SchemaError(f"expected `{path}.{self.key}` (the entity key) or `{path}.inputs` "
                              "(the raw inputs)", path=path)
        return key, inputs, rid

    def _key(self, value: object, path: str):
        if self.key_type == "int":
            if type(value) is int and _INT64[0] <= value <= _INT64[1]:
                return value
            raise SchemaError(f"expected an integer key at `{path}`, got {_show(value)}", path=path)
        if type(value) is str and value:
            return value
        raise SchemaError(f"expected a non-empty string key at `{path}`, got {_show(value)}",
                          path=path)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
