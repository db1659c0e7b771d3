"""The typed result of a deployment's pipeline for n rows, and the contract it follows.

A `Result` holds, per row: the key, the score, the decision (and payload), the named extra
columns later stages add, and the row's error as a `ScorelineError` (its kind, path and message).
Every door is a thin encoder of it: `to_batch` (Arrow: the contract columns, the extras and an
`error` text column), `answer` (one row as the JSON contract), `error_columns` (kind, path,
message: reject files). A row with an error has no score and no decision.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoreline.errors import ScorelineError

__all__ = ["Contract", "Result"]

# Rows of the precomputed constant output columns: batches up to this size slice them.
_CONSTANT_ROWS = 4096


class Contract:
    """The output fields of one deployment: names, the Arrow schema, extra fields from stages."""

    def __init__(self, model_id: str, version: int, key_name: str, key_type: pa.DataType,
                 score_name: str, decision_name: str, decider, extra_fields=()) -> None:
        self.model_id = model_id
        self.version = version
        self.key_name = key_name
        self.score_name = score_name
        self.decision_name = decision_name
        self.decider = decider
        fields = [
            pa.field(key_name, key_type),
            pa.field("model-id", pa.string()),
            pa.field("model-version", pa.int64()),
            pa.field(score_name, pa.float64()),
            pa.field(decision_name, pa.string()),
        ]
        self.payload_name = None
        if decider.payload_labels is not None:
            self.payload_name = decider.payload_field
            fields.append(pa.field(self.payload_name, pa.string()))
        self.extra_fields = tuple(extra_fields)
        fields.extend(self.extra_fields)
        self.names = tuple(f.name for f in fields)
        self.schema = pa.schema(fields + [pa.field("error", pa.string())])
        # The columns that are the same in every answer, built once and sliced per batch (a
        # slice is ~0.4 us; pa.repeat and pa.nulls ~1-9 us each, paid on every request).
        self._constant = {
            "model-id": pa.array([model_id] * _CONSTANT_ROWS, pa.string()),
            "model-version": pa.array(np.full(_CONSTANT_ROWS, version, dtype=np.int64)),
            "error": pa.nulls(_CONSTANT_ROWS, pa.string()),
        }

    def constant(self, name: str, n: int) -> pa.Array:
        column = self._constant[name]
        if n <= len(column):
            return column.slice(0, n)
        return pa.repeat(column[0], n) if name != "error" else pa.nulls(n, pa.string())


class Result:
    """n scored rows (see the module docstring). Built by the pipeline; read by the doors.

    `score`: float64 array (or list) per row; `index`/`payload`: label and payload indices from
    the decision (`payload` None without one), or `labels`/`payloads`: the strings themselves
    (the one-row path); `errors`: row -> ScorelineError; `extras`: field name -> values per row.
    """

    __slots__ = ("contract", "n", "keys", "score", "index", "payload", "labels", "payloads",
                 "errors", "extras", "_py", "_batch")

    def __init__(self, contract: Contract, n: int, keys, score, *, index=None, payload=None,
                 labels=None, payloads=None, errors: dict | None = None,
                 extras: dict | None = None) -> None:
        self.contract = contract
        self.n = n
        self.keys = keys
        self.score = score
        self.index = index
        self.payload = payload
        self.labels = labels
        self.payloads = payloads
        self.errors: dict[int, ScorelineError] = errors if errors is not None else {}
        self.extras: dict = extras if extras is not None else {}
        self._py = None
        self._batch = None

    def error(self, i: int) -> ScorelineError | None:
        """Row `i`'s error, or None when it was scored."""
        return self.errors.get(i) if self.errors else None

    def answer(self, i: int) -> dict:
        """Row `i` as the contract, in the order of the Arrow schema: key, model-id,
        model-version, score, decision, payload, extras (score and decision None for a row
        with an error)."""
        c = self.contract
        keys, scores, labels, payloads = self._py or self.pylists()
        bad = bool(self.errors) and i in self.errors
        out = {c.key_name: keys[i], "model-id": c.model_id, "model-version": c.version,
               c.score_name: None if bad else scores[i],
               c.decision_name: None if bad else labels[i]}
        if c.payload_name is not None:
            out[c.payload_name] = None if bad else payloads[i]
        for field in c.extra_fields:
            values = self.extras.get(field.name)
            out[field.name] = None if values is None or bad else values[i]
        return out

    def one(self) -> dict:
        """The answer of a one-row result as the Python API gives it (model-id and
        model-version first), or its error raised."""
        if self.errors:
            raise self.errors[0]
        c = self.contract
        return {"model-id": c.model_id, "model-version": c.version, **self.answer(0)}

    def error_columns(self) -> tuple[list, list, list]:
        """Per row: the error kind, path and message (None where the row was scored)."""
        kinds, paths, messages = [None] * self.n, [None] * self.n, [None] * self.n
        for row, exc in self.errors.items():
            kinds[row], paths[row], messages[row] = exc.kind, exc.path, exc.message
        return kinds, paths, messages

    def to_batch(self) -> pa.RecordBatch:
        """The contract columns, the extras and `error` (the message) as one RecordBatch."""
        if self._batch is None:
            self._batch = self._build_batch()
        return self._batch

    # --- internals ----------------------------------------------------------------------------

    def pylists(self):
        """Keys, scores, labels and payloads as Python lists, built once (a scored row's score
        and label; read `errors` for the rest)."""
        if self._py is None:
            if self.labels is not None and type(self.score) is list and type(self.keys) is list:
                self._py = (self.keys, self.score, self.labels, self.payloads)  # the one-row run
                return self._py
            c = self.contract
            keys = self.keys if type(self.keys) is list else self.keys.to_pylist()
            scores = self.score if type(self.score) is list else self.score.tolist()
            labels, payloads = self.labels, self.payloads
            if labels is None:
                labels = _label_list(c.decider.label_list, self.index)
            if payloads is None and self.payload is not None:
                values = c.decider.payload_list
                payloads = [values[p] if p >= 0 else None for p in self.payload.tolist()]
            self._py = (keys, scores, labels, payloads)
        return self._py

    def _build_batch(self) -> pa.RecordBatch:
        c = self.contract
        n = self.n
        if n == 0:
            return pa.RecordBatch.from_pylist([], schema=c.schema)
        keys = self.keys if isinstance(self.keys, pa.Array) else pa.array(self.keys, c.schema.field(0).type)
        score = np.asarray(self.score, dtype=np.float64)
        errors = self.errors
        if errors:
            bad = np.zeros(n, dtype=bool)
            bad[list(errors)] = True
            text = [None] * n
            for row, exc in errors.items():
                text[row] = exc.message
            error_column = pa.array(text, pa.string())
            score_column = pa.array(score, mask=bad)
        else:
            bad = np.zeros(n, dtype=bool)
            error_column = c.constant("error", n)
            score_column = pa.array(score)
        if self.labels is not None:
            labels = pa.array([None if b else v for v, b in zip(self.labels, bad)], pa.string())
        else:
            labels = c.decider.label_column(self.index, bad)
        columns = [keys, c.constant("model-id", n), c.constant("model-version", n), score_column,
                   labels]
        if c.payload_name is not None:
            if self.payloads is not None:
                columns.append(pa.array([None if b else v for v, b in zip(self.payloads, bad)],
                                        pa.string()))
            else:
                columns.append(c.decider.payload_column(self.payload, bad))
        for field in c.extra_fields:
            values = self.extras.get(field.name)
            if values is None:
                columns.append(pa.nulls(n, field.type))
            else:  # a row with an error has no outputs, extras included
                columns.append(pa.array(values, field.type, mask=bad if errors else None))
        columns.append(error_column)
        return pa.RecordBatch.from_arrays(columns, schema=c.schema)


def _label_list(label_list: list, index: np.ndarray) -> list:
    """Label strings for label indices (-1: none); top-k rows join their labels with ','."""
    if index.ndim == 2:
        return [None if min(row) < 0 else ",".join(label_list[j] for j in row)
                for row in index.tolist()]
    return [label_list[j] if j >= 0 else None for j in index.tolist()]
