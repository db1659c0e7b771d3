"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data extension.

Input tensors map by name to the entity key or the manifest's raw inputs; each is one value per
row (shape [n] or [n, 1]). Output tensors are the contract fields (key, model-id, model-version,
score, decision, further outputs), shape [n]; a row scored from inline inputs has no key, sent as
null in JSON data (as v1 answers) and as 0 or "" in binary data; a score with no value (a remote
model's decision fallback) is null in JSON and NaN in binary data, never 0. The protocol has no per-row
errors: a row that cannot be scored fails the request with `{"error": "... (at row i, <path>)"}`.
JSON tensor data is checked against its datatype's range (an INT8 holds -128..127). Datatypes: BOOL, INT8..INT64,
UINT8..UINT64, FP32, FP64, BYTES (UTF-8); FP16 and BF16 are refused.
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from starlette.routing import Route

import scoreline
from scoreline.errors import NotFoundError, SchemaError

from .asgi import JSON, Endpoint, decode_json, encode_json, header, read_body, send_bytes, send_json
from .errors import MalformedBody, PayloadTooLarge
from .scoring import Request, Scorer

__all__ = ["v2_routes", "DATATYPES"]

DATATYPES = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BYTES": None,
}
# what each manifest input type is called in the protocol's metadata
_INPUT_DATATYPE = {"int": "INT64", "float": "FP64", "string": "BYTES", "bool": "BOOL", "date": "BYTES", "timestamp": "BYTES"}


class _Tensor(msgspec.Struct, frozen=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class _Output(msgspec.Struct, frozen=True):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct, frozen=True):
    inputs: list[_Tensor]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[_Output] | None = None


_decode_json = msgspec.json.Decoder().decode
_ABSENT = object()


def _request(body: object) -> _InferRequest:
    """A decoded JSON body as an inference request; a field of the wrong shape is a SchemaError
    at its own path (checked here, field by field, so the path is ours and not read out of a
    decoder's message). Unknown fields are ignored, as the protocol allows extensions."""
    _need(type(body) is dict, "an object", body, "$")
    inputs = body.get("inputs", _ABSENT)
    _need(inputs is not _ABSENT, "the field `inputs`", None, "$.inputs")
    _need(type(inputs) is list, "an array of tensors", inputs, "$.inputs")
    tensors = [_tensor_of(t, f"$.inputs[{i}]") for i, t in enumerate(inputs)]
    rid = body.get("id")
    _need(rid is None or type(rid) is str, "a string", rid, "$.id")
    parameters = _parameters(body, "$")
    outputs = body.get("outputs")
    if outputs is not None:
        _need(type(outputs) is list, "an array of outputs", outputs, "$.outputs")
        wanted = []
        for i, output in enumerate(outputs):
            where = f"$.outputs[{i}]"
            _need(type(output) is dict, "an object", output, where)
            _need(type(output.get("name")) is str, "a string", output.get("name"), f"{where}.name")
            wanted.append(_Output(output["name"], _parameters(output, where)))
        outputs = wanted
    return _InferRequest(tensors, rid, parameters, outputs)


def _tensor_of(t: object, where: str) -> _Tensor:
    _need(type(t) is dict, "a tensor object", t, where)
    name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
    _need(type(name) is str, "a string", name, f"{where}.name")
    _need(type(shape) is list and all(type(d) is int for d in shape), "an array of integers",
          shape, f"{where}.shape")
    _need(type(datatype) is str, "a string", datatype, f"{where}.datatype")
    return _Tensor(name, shape, datatype, _parameters(t, where), t.get("data"))


def _parameters(obj: dict, where: str) -> dict:
    parameters = obj.get("parameters", {})
    _need(type(parameters) is dict, "an object", parameters, f"{where}.parameters")
    return parameters


def _need(ok: bool, expected: str, got: object, path: str) -> None:
    if not ok:
        shown = "nothing" if got is None else repr(got)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SchemaError(f"invalid inference request: expected {expected} at `{path}`, got {shown}",
                          path=path)


def _provenance(d) -> dict:
    """The version's provenance as the protocol's flat parameters (registry/provenance.py): the
    artifact's sha256 (hashed at load), and the manifest's and the registering environment's as
    recorded, each environment entry as `environment.<name>`."""
    recorded = d.provenance or {}
    out = {"artifact-sha256": d.artifact_sha256}
    if recorded.get("manifest-sha256"):
        out["manifest-sha256"] = recorded["manifest-sha256"]
    out.update({f"environment.{k}": v for k, v in recorded.get("environment", {}).items()})
    return out


def v2_routes(scorer: Scorer) -> list[Route]:
    settings = scorer.settings

    async def server_metadata(scope, receive, send) -> None:
        await send_json(send, 200, {"name": "scoreline", "version": scoreline.__version__,
                                    "extensions": ["binary_tensor_data"]})

    async def live(scope, receive, send) -> None:
        await send_json(send, 200, {"live": True})

    async def ready(scope, receive, send) -> None:
        engine = scorer.engine
        is_ready = bool(engine is not None and engine.ready)
        await send_json(send, 200 if is_ready else 503, {"ready": is_ready})

    async def _entry(scope):
        params = scope["path_params"]
        return await scorer.entry(params["name"], params.get("version"), path="$")

    async def model_metadata(scope, receive, send) -> None:
        entry = await _entry(scope)
        d = entry.deployment
        listing = await asyncio.get_running_loop().run_in_executor(None, scorer.require_engine().models)
        versions = [str(v) for m in listing if m.get("model-id") == d.model_id for v in _version_numbers(m)]
        shape = entry.schema
        inputs = [{"name": shape.key, "datatype": "INT64" if shape.key_type == "int" else "BYTES", "shape": [-1]}]
        inputs += [{"name": n, "datatype": _INPUT_DATATYPE[shape.input_types[n]], "shape": [-1]} for n in shape.input_names]
        schema = d.output_schema
        outputs = [{"name": n, "datatype": _arrow_datatype(schema.field(n).type), "shape": [-1]} for n in entry.fields]
        await send_json(send, 200, {"name": d.model_id, "versions": versions or [str(d.version)],
                                    "platform": f"scoreline_{getattr(d.manifest.model, 'format', 'model')}",
                                    "inputs": inputs, "outputs": outputs, "parameters": _provenance(d)})

    async def model_ready(scope, receive, send) -> None:
        entry = await _entry(scope)  # raises not-found / not-ready
        await send_json(send, 200, {"name": entry.deployment.model_id, "ready": True})

    async def infer(scope, receive, send) -> None:
        body = await read_body(scope, receive, settings.max_body_bytes)
        entry = await _entry(scope)
        request, binary = _split(scope, body)
        if not request.inputs:
            raise SchemaError("expected at least one input tensor at `$.inputs`", path="$.inputs")
        columns, paths, n = {}, {}, None
        offset = 0
        for i, tensor in enumerate(request.inputs):
            where = f"$.inputs[{i}]"
            values, offset = _tensor_values(tensor, where, binary, offset, settings.max_rows)
            if n is not None and len(values) != n:
                raise SchemaError(f"tensor {tensor.name!r} has {len(values)} rows, the first had {n}", path=f"{where}.shape")
            if tensor.name in columns:
                raise SchemaError(f"tensor {tensor.name!r} appears twice", path=f"{where}.name")
            n = len(values)
            columns[tensor.name] = values
            paths[tensor.name] = f"{where}.data"
        if n == 0:
            raise SchemaError("expected at least one row in the input tensors", path="$.inputs[0].shape")
        base = request.id or scorer.new_request_id()
        ids = [base] if n == 1 else [f"{base}:{j}" for j in range(n)]
        rows = entry.schema.parse_columns(columns, n, ids, paths)
        explain = entry.schema.check_explain(request.parameters.get("explain"), "$.parameters.explain")
        if explain is not None:  # reason codes: the `reasons` output tensor (JSON text per row)
            rows.explain = [explain] * n
        scored = await scorer.score_rows(entry, Request(rows))
        scorer.raise_row_errors(scored, "row {row}: $")
        wanted = _wanted_outputs(request, entry.fields)
        answer = scored.result.to_batch().slice(scored.offset, scored.n)
        header_json, chunks = _outputs(answer, wanted)
        response = {"model_name": entry.deployment.model_id, "model_version": str(entry.deployment.version),
                    "outputs": header_json}
        if request.id is not None:
            response["id"] = request.id
        encoded = encode_json(response)
        if not chunks:
            await send_bytes(send, 200, encoded, JSON)
        else:
            extra = [(b"inference-header-content-length", str(len(encoded)).encode())]
            await send_bytes(send, 200, b"".join([encoded, *chunks]), b"application/octet-stream", extra)

    def route(path: str, handler, methods=("GET",)) -> Route:
        return Route(path, Endpoint(handler), methods=list(methods))

    return [
        route("/v2", server_metadata),
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        route("/v2/models/{name}", model_metadata),
        route("/v2/models/{name}/versions/{version}", model_metadata),
        route("/v2/models/{name}/ready", model_ready),
        route("/v2/models/{name}/versions/{version}/ready", model_ready),
        route("/v2/models/{name}/infer", infer, ("POST",)),
        route("/v2/models/{name}/versions/{version}/infer", infer, ("POST",)),
    ]


def _version_numbers(model: dict) -> list:
    versions = model.get("versions") or []
    return [v.get("version") if isinstance(v, dict) else v for v in versions]


def _split(scope, body: bytes) -> tuple[_InferRequest, memoryview]:
    """The JSON header and the binary tail (Inference-Header-Content-Length says where they part)."""
    declared = header(scope, b"inference-header-content-length")
    if declared is None:
        head, tail = body, memoryview(b"")
    else:
        if not declared.isdigit() or int(declared) > len(body):
            raise MalformedBody(f"Inference-Header-Content-Length {declared.decode(errors='replace')!r} "
                                f"does not fit a {len(body)}-byte body")
        head, tail = body[: int(declared)], memoryview(body)[int(declared):]
    return _request(decode_json(head, _decode_json, "the inference request")), tail


def _tensor_values(tensor: _Tensor, where: str, binary: memoryview, offset: int, max_rows: int):
    """A tensor's elements as a Python list (one per row), and the next binary offset."""
    if tensor.datatype not in DATATYPES:
        raise SchemaError(f"unsupported datatype {tensor.datatype!r}; expected one of {sorted(DATATYPES)}",
                          path=f"{where}.datatype")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise SchemaError(f"expected shape [n] or [n, 1], got {shape}", path=f"{where}.shape")
    n = shape[0]
    if n > max_rows:
        raise PayloadTooLarge(f"{n} rows exceed the limit of {max_rows} per request", path=f"{where}.shape")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise MalformedBody(f"binary_data_size {size!r} runs past the body's binary part",
                                path=f"{where}.parameters.binary_data_size")
        raw = binary[offset : offset + size]
        values = _from_binary(raw, tensor.datatype, where)
        offset += size
    else:
        if tensor.data is None:
            raise SchemaError("expected `data` or parameters.binary_data_size", path=f"{where}.data")
        values = _from_json(tensor.data, tensor.datatype, where)
    if len(values) != n:
        raise SchemaError(f"shape {shape} needs {n} elements, got {len(values)}", path=f"{where}.data")
    return values, offset


def _from_binary(raw: memoryview, datatype: str, where: str) -> list:
    if datatype == "BYTES":
        values, pos, end = [], 0, len(raw)
        while pos < end:
            if pos + 4 > end:
                raise MalformedBody("a BYTES element's length prefix is truncated", path=f"{where}.data")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > end:
                raise MalformedBody("a BYTES element runs past its tensor", path=f"{where}.data")
            values.append(_utf8(bytes(raw[pos : pos + length]), where))
            pos += length
        return values
    dtype = DATATYPES[datatype]
    if len(raw) % dtype.itemsize:
        raise MalformedBody(f"{len(raw)} bytes is not a whole number of {datatype} elements", path=f"{where}.data")
    return np.frombuffer(raw, dtype=dtype).tolist()


def _from_json(data: Any, datatype: str, where: str) -> list:
    flat = data
    if isinstance(data, list) and data and isinstance(data[0], list):
        flat = [x for row in data for x in (row if isinstance(row, list) else [row])]
    if not isinstance(flat, list):
        flat = [flat]
    bad = next((j for j, x in enumerate(flat) if not _fits(x, datatype)), None)
    if bad is not None:
        expected = {"BYTES": "strings", "BOOL": "true or false"}.get(
            datatype, "integers" if datatype.startswith(("INT", "UINT")) else "numbers")
        if datatype.startswith(("INT", "UINT")) and type(flat[bad]) is int:
            low, high = _INT_RANGES[datatype]
            expected = f"integers from {low} to {high}"
        elif datatype == "FP32" and type(flat[bad]) in (int, float):
            expected = "numbers within FP32's range"
        raise SchemaError(f"expected {expected} for a {datatype} tensor, got {flat[bad]!r}", path=f"{where}.data[{bad}]")
    return flat


def _fits(x, datatype: str) -> bool:
    if datatype == "BYTES":
        return type(x) is str
    if datatype == "BOOL":
        return type(x) is bool
    if datatype.startswith(("INT", "UINT")):
        low, high = _INT_RANGES[datatype]
        return type(x) is int and low <= x <= high
    if datatype == "FP32":
        return type(x) in (int, float) and not abs(x) > _FP32_MAX  # NaN and inf pass, as in FP32
    return type(x) in (int, float)


_INT_RANGES = {name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
               for name, dtype in DATATYPES.items() if name.startswith(("INT", "UINT"))}
_FP32_MAX = float(np.finfo(np.float32).max)


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("a BYTES element is not UTF-8 text", path=f"{where}.data") from None


def _wanted_outputs(request: _InferRequest, fields: tuple[str, ...]) -> list[tuple[str, bool]]:
    """(output name, as binary) pairs: the requested outputs, or all contract fields."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    if request.outputs is None:
        return [(name, default_binary) for name in fields]
    wanted = []
    for i, output in enumerate(request.outputs):
        if output.name not in fields:
            raise NotFoundError(f"unknown output {output.name!r}; expected one of {list(fields)}",
                                path=f"$.outputs[{i}].name")
        wanted.append((output.name, bool(output.parameters.get("binary_data", default_binary))))
    return wanted


def _outputs(batch: pa.RecordBatch, wanted: list[tuple[str, bool]]) -> tuple[list[dict], list[bytes]]:
    tensors, chunks = [], []
    n = batch.num_rows
    for name, binary in wanted:
        column = batch.column(name)
        datatype = _arrow_datatype(column.type)
        tensor = {"name": name, "datatype": datatype, "shape": [n]}
        if datatype == "BYTES":
            text = _json_text if pa.types.is_list(column.type) else str  # lists (reasons): JSON per row
            values = ["" if v is None else text(v) for v in column.to_pylist()]
            if binary:
                encoded = [v.encode() for v in values]
                raw = b"".join(struct.pack("<I", len(v)) + v for v in encoded)
            else:
                tensor["data"] = values
        elif not binary:
            tensor["data"] = column.to_pylist()  # null: no entity (a row scored from inline inputs)
        else:
            if column.null_count:  # binary data has no null: 0 (or false); NaN for a missing
                # score (a remote model's decision fallback), never a made-up 0
                fill = math.nan if datatype in ("FP32", "FP64") else (0 if datatype != "BOOL" else False)
                column = pc.fill_null(column, pa.scalar(fill, column.type))
            raw = column.to_numpy(zero_copy_only=False).astype(DATATYPES[datatype], copy=False).tobytes()
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        tensors.append(tensor)
    return tensors, chunks


def _json_text(value) -> str:
    return encode_json(value).decode()


def _arrow_datatype(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_integer(arrow_type):
        return {8: "INT8", 16: "INT16", 32: "INT32", 64: "INT64"}[arrow_type.bit_width] if pa.types.is_signed_integer(
            arrow_type) else {8: "UINT8", 16: "UINT16", 32: "UINT32", 64: "UINT64"}[arrow_type.bit_width]
    if pa.types.is_float32(arrow_type):
        return "FP32"
    if pa.types.is_floating(arrow_type):
        return "FP64"
    return "BYTES"
