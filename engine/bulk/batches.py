"""One batch of a bulk job: ``keep`` columns + the scorer's outputs + ``error``, split into the
output rows and the reject rows (their kept columns, where they came from and the reason); and the
checks of every source's columns before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import InputError

__all__ = ["score_batch", "score_columns", "split_rejects", "check_schema", "check_sources", "REJECT_FIELDS"]

REJECT_FIELDS = (pa.field("source", pa.string()), pa.field("row", pa.int64()), pa.field("reason", pa.string()))


def score_batch(scorer, batch: pa.RecordBatch, keep: Sequence[str] = (), text: Sequence[str] = ()) -> pa.RecordBatch:
    """One batch, on the calling thread: ``keep`` columns + the scorer's outputs + ``error``.

    ``scorer`` comes from :func:`as_scorer`; ``text`` names columns read as text (CSV) that hold
    numbers: a value that is not one rejects its row. What Ray and Spark workers call.
    """
    return score_columns(scorer, batch, tuple(keep), tuple(text))


def score_columns(scorer, batch: pa.RecordBatch, keep: tuple[str, ...], text: tuple[str, ...]) -> pa.RecordBatch:
    kept = [batch.column(name) for name in keep]
    kept_fields = [batch.schema.field(name) for name in keep]
    parse_errors = None
    if text:
        batch, parse_errors = scorer.parse_text(batch, text)
    out = scorer.score(batch)
    error = out.column("error")
    if parse_errors is not None:
        error = pc.coalesce(parse_errors, error)
    arrays, fields = kept, kept_fields
    for i, field in enumerate(out.schema):
        if field.name not in keep and field.name != "error":
            arrays.append(out.column(i))
            fields.append(field)
    arrays.append(error)
    fields.append(pa.field("error", pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def split_rejects(scored: pa.RecordBatch, source, first_row: int | None, out_schema: pa.Schema, rej_schema: pa.Schema):
    error = scored.column("error")
    if error.null_count == scored.num_rows:
        return scored.select(out_schema.names), None
    ok = pc.is_null(error)
    bad = pc.invert(ok)
    failed = scored.filter(bad)
    n = failed.num_rows
    if first_row is None:
        rows = pa.nulls(n, pa.int64())
    else:
        rows = pc.filter(pa.array(range(first_row, first_row + scored.num_rows), pa.int64()), bad)
    where = pa.array([source] * n, pa.string()) if isinstance(source, str) else pc.filter(source, bad)
    arrays = [failed.column(f.name) for f in list(rej_schema)[: len(rej_schema) - len(REJECT_FIELDS)]]
    arrays += [where, rows, failed.column("error")]
    return scored.filter(ok).select(out_schema.names), pa.RecordBatch.from_arrays(arrays, schema=rej_schema)


# --- checks before anything is written ---------------------------------------------------------


def check_schema(scorer, schema: pa.Schema, keep: tuple[str, ...], text: tuple[str, ...], where: str) -> None:
    problems = [f"column {name!r} (kept) is missing" for name in keep if name not in schema.names]
    # The entity key may be kept (the deployment echoes it anyway); any other clash would hide
    # one of the two columns.
    outputs = set(scorer.output_schema.names) | {"error"}
    problems += [
        f"kept column {name!r} has the name of one of the model's outputs"
        for name in keep
        if name in outputs and name != getattr(scorer, "key_name", None)
    ]
    problems += scorer.problems(schema, text)
    if problems:
        raise InputError(f"{where} cannot be scored: " + "; ".join(problems), path=where)


def check_sources(scorer, srcs, keep: tuple[str, ...]) -> pa.Schema:
    """Check every file before any output exists; returns the kept columns' common schema."""
    messages = []
    for src in srcs:
        try:
            check_schema(scorer, src.schema, keep, tuple(src.column_types or ()), src.path)
        except InputError as exc:
            messages.append(exc.message)
    if messages:
        raise InputError("\n".join(messages), path=srcs[0].path if len(srcs) == 1 else "input")
    fields = []
    for name in keep:
        types = {src.schema.field(name).type for src in srcs}
        fields.append(pa.field(name, types.pop() if len(types) == 1 else _common_type(name, types)))
    return pa.schema(fields)


def _common_type(name: str, types: set) -> pa.DataType:
    try:
        schemas = [pa.schema([pa.field(name, t)]) for t in types]
        return pa.unify_schemas(schemas, promote_options="permissive").field(name).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        listed = ", ".join(sorted(map(str, types)))
        raise InputError(f"column {name!r} has different types across files: {listed}", path=f"column {name!r}") from None
