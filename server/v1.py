"""The v1 API: the seed's JSON call (one entity or a batch of rows) and Arrow IPC in, Arrow IPC out."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from starlette.routing import Route

from scoreline.errors import InputError, SchemaError

from .asgi import JSON, Endpoint, header, read_body, send_bytes, send_json
from scoreline.engine.data.request import ARROW_TYPES

from .errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from .scoring import Request, Scorer

__all__ = ["v1_routes", "ARROW_STREAM"]

ARROW_STREAM = b"application/vnd.apache.arrow.stream"
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def decode_object(body: bytes) -> dict:
    """A JSON object from bytes: 400 when it is not JSON, 422 when it is JSON but not an object."""
    try:
        return _decode_object(body)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"expected a JSON object at `$`: {exc}", path="$") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", path="$") from None


def v1_routes(scorer: Scorer) -> tuple[list[Route], Callable]:
    """The v1 routes, and the `/v1/score` handler as `(scope, receive) -> answer bytes` for the fast path."""
    settings = scorer.settings

    async def score_one(scope, receive) -> bytes:
        """The answer to one `/v1/score` call as JSON bytes; raises the error to answer instead."""
        body = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        entry = await scorer.entry(body.get("model-id"), body.get("model-version"))
        rows = entry.schema.parse_request(body, scorer.new_request_id())
        scored = await scorer.score_rows(entry, Request(rows, single=True, echo_id="request-id" in body))
        if scored.body is not None:  # the answer, encoded in the executor
            return scored.body
        raise scored.error(0)

    async def score_one_endpoint(scope, receive, send) -> None:
        await send_bytes(send, 200, await score_one(scope, receive), JSON)

    async def score_batch(scope, receive, send) -> None:
        body = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        for field in body:
            if field not in ("model-id", "model-version", "rows"):
                raise SchemaError(f"unknown field `$.{field}`; expected model-id, model-version, rows", path=f"$.{field}")
        entry = await scorer.entry(body.get("model-id"), body.get("model-version"))
        raw_rows = body.get("rows")
        if isinstance(raw_rows, list) and len(raw_rows) > settings.max_rows:
            raise PayloadTooLarge(f"{len(raw_rows)} rows exceed the limit of {settings.max_rows} per request", path="$.rows")
        if raw_rows == []:
            raise SchemaError("expected at least one row at `$.rows`", path="$.rows")
        rows = entry.schema.parse_rows(raw_rows, "$.rows", scorer.new_request_id)
        scored = await scorer.score_rows(entry, Request(rows))
        results = []
        for i in range(scored.n):
            result = scored.row(i)
            result["request-id"] = rows.request_ids[i]
            error = scored.error(i)
            result["error"] = None if error is None else error.under(f"$.rows[{i}]").to_dict()
            results.append(result)
        d = entry.deployment
        await send_json(send, 200, {"model-id": d.model_id, "model-version": d.version, "results": results})

    async def score_arrow(scope, receive, send) -> None:
        content_type = (header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != ARROW_STREAM:
            raise UnsupportedMediaType(
                f"expected Content-Type {ARROW_STREAM.decode()}, got {content_type.decode(errors='replace') or 'none'}")
        model_id = scope["path_params"]["model_id"]
        version = _query_version(scope)
        entry = await scorer.entry(model_id, version, path="$")
        body = await read_body(scope, receive, settings.max_body_bytes)
        table = _read_stream(body)
        if table.num_rows > settings.max_arrow_rows:
            raise PayloadTooLarge(f"{table.num_rows} rows exceed the limit of {settings.max_arrow_rows} per request")
        table, request_ids = _conform(table, entry.schema)
        outputs, offset = [], 0
        for batch in table.combine_chunks().to_batches() or [_empty(table.schema)]:
            ids = None if request_ids is None else request_ids[offset : offset + batch.num_rows]
            offset += batch.num_rows
            outputs.append((await scorer.score_arrow(entry, batch, ids)).to_batch())
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, outputs[0].schema) as writer:
            for out in outputs:
                writer.write_batch(out)
        await send_bytes(send, 200, sink.getvalue(), ARROW_STREAM)

    return [
        Route("/v1/score", Endpoint(score_one_endpoint), methods=["POST"]),
        Route("/v1/score/batch", Endpoint(score_batch), methods=["POST"]),
        Route("/v1/models/{model_id}/score", Endpoint(score_arrow), methods=["POST"]),
    ], score_one


def _query_version(scope) -> str | None:
    """`?model-version=3` or `?model-version=staging` on the Arrow endpoint."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("model-version")
    return values[-1] if values else None


def _read_stream(body: bytes) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise MalformedBody(f"the body is not an Arrow IPC stream: {exc}") from None


def _conform(table: pa.Table, shape) -> tuple[pa.Table, list[str] | None]:
    """Cast the key and input columns to the declared types; an optional `request-id` column is taken off."""
    known = {shape.key: ARROW_TYPES[shape.key_type]}
    known.update((name, ARROW_TYPES[kind]) for name, kind in shape.input_types.items())
    request_ids = None
    columns, names = [], []
    for name, column in zip(table.column_names, table.columns):
        if name == "request-id":
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise InputError(f"column 'request-id' must be utf8, got {column.type}", path="column 'request-id'")
            request_ids = column.to_pylist()
            continue
        target = known.get(name)
        if target is None:
            raise InputError(f"unknown column {name!r}; expected some of {shape.known_names()}", path=f"column {name!r}")
        if name in names:
            raise InputError(f"column {name!r} appears twice", path=f"column {name!r}")
        if column.type != target:
            try:
                column = pc.cast(column, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise InputError(f"column {name!r} cannot be read as {target}: {exc}", path=f"column {name!r}") from None
        columns.append(column)
        names.append(name)
    if not names:
        raise InputError(f"no key or input columns; expected some of {shape.known_names()}", path="$")
    return pa.table(columns, names=names), request_ids


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)
