"""openapi_document(settings, model_ids) -> the OpenAPI 3.1 description of every endpoint the app serves.

Written by hand next to the handlers (not derived from type hints: the scoring endpoints are raw
ASGI), and checked against the running server by a property-based fuzzer (tests/server/test_fuzz.py).
The entity key's name depends on the model, so a score request allows further properties.
"""

from __future__ import annotations

import scoreline

from scoreline.registry.repository import MODEL_ID_PATTERN, VERSION_REF_PATTERN
from .settings import ServerSettings

__all__ = ["openapi_document"]

_NAME = {"type": "string", "pattern": f"^{MODEL_ID_PATTERN}$"}
_ALIAS = {"type": "string", "pattern": f"^(?:{VERSION_REF_PATTERN})$"}
_VALUE = {"type": ["string", "number", "integer", "boolean", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, v2: bool = False) -> dict:
    text = {400: "Undecodable body (not JSON, not an Arrow IPC stream)", 401: "Missing or wrong API key",
            404: "Unknown model, version, alias, entity or output", 405: "Method not allowed",
            409: "Refused registration", 413: "Body or row count over the limit",
            415: "Unsupported Content-Type", 422: "A field has the wrong type, is missing or unknown",
            503: "Not ready, or overloaded (with Retry-After)"}
    schema = _ref("V2Error" if v2 else "Error")
    return {str(c): _json(schema, text[c]) for c in codes}


def openapi_document(settings: ServerSettings, *, model_ids: list[str] = ()) -> dict:
    """The OpenAPI document; `model_ids` (the registry's models now) become examples."""
    model_id = dict(_NAME, examples=list(model_ids)[:10]) if model_ids else _NAME
    version = {"oneOf": [{"type": "integer", "minimum": 1}, _ALIAS],
               "description": "A version number or an alias (default: alias `production`, else the latest)."}
    scoring_errors = (400, 401, 404, 413, 422, 503)
    secured = [{"bearer": []}, {"apiKey": []}, {}] if not settings.api_keys else [{"bearer": []}, {"apiKey": []}]
    admin = [{"bearer": []}, {"apiKey": []}]
    name_param = {"name": "name", "in": "path", "required": True, "schema": model_id}
    version_param = {"name": "version", "in": "path", "required": True, "schema": _ALIAS}

    def v2_model(extra: list, op: dict) -> dict:
        return dict(op, parameters=[name_param, *extra])

    def infer(extra: list) -> dict:
        return {"post": v2_model(extra, {
            "summary": "Open Inference Protocol: score tensors (one value per row; binary tensor data extension supported)",
            "security": secured,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "Output tensors: the contract fields", "content": {
                "application/json": {"schema": _ref("InferResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(*scoring_errors, 405, v2=True)}})}

    def metadata(extra: list) -> dict:
        return {"get": v2_model(extra, {"summary": "Model metadata: inputs and outputs as tensors", "security": secured,
                                        "responses": {"200": _json(_ref("ModelMetadata"), "Metadata"),
                                                      **_errors(401, 404, 422, 503, v2=True)}})}

    def ready(extra: list) -> dict:
        return {"get": v2_model(extra, {"summary": "Whether the model version is loaded", "security": secured,
                                        "responses": {"200": _json(_ref("ModelReady"), "Ready"),
                                                      **_errors(401, 404, 422, 503, v2=True)}})}

    paths = {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(_ref("Status"), "Alive")}}},
        "/readyz": {"get": {"summary": "Readiness: every live deployment compiled and warmed", "responses": {
            "200": _json(_ref("Ready"), "Ready"), "503": _json(_ref("Ready"), "Not ready yet")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4)", "responses": {"200": {
            "description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        "/v1/score": {"post": {
            "summary": "Score one entity by key, or one row of inline inputs",
            "security": secured,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ScoreRequest")}}},
            "responses": {"200": _json(_ref("ScoreResponse"), "The model's output contract"),
                          **_errors(*scoring_errors, 405)}}},
        "/v1/score/batch": {"post": {
            "summary": f"Score up to {settings.max_rows} rows of one model in one call; rows fail one by one",
            "security": secured,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchRequest")}}},
            "responses": {"200": _json(_ref("BatchResponse"), "One result per row, in order"),
                          **_errors(*scoring_errors, 405)}}},
        "/v1/models": {"get": {"summary": "Models, versions, aliases and contracts", "security": secured,
                               "responses": {"200": _json(_ref("ModelList"), "Models"), **_errors(401, 503)}}},
        "/v1/models/{model_id}": {"get": {
            "summary": "One model", "security": secured,
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": model_id}],
            "responses": {"200": _json(_ref("Model"), "The model"), **_errors(401, 404, 503)}}},
        "/v1/models/{model_id}/score": {"post": {
            "summary": f"Score an Arrow IPC stream (up to {settings.max_arrow_rows} rows); answers an Arrow IPC "
                       "stream of the contract columns plus `error` (null when the row was scored)",
            "security": secured,
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": model_id},
                           {"name": "model-version", "in": "query", "required": False, "schema": _ALIAS}],
            "requestBody": {"required": True, "content": {
                "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "Scored rows", "content": {
                "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(*scoring_errors, 405, 415)}}},
        "/admin/reload": {"post": {"summary": "Rescan the registry; new versions compile and warm before they swap in",
                                   "security": admin,
                                   "responses": {"200": _json(_ref("ModelList"), "Models after the reload"),
                                                 **_errors(401, 405, 503)}}},
        "/admin/promote": {"post": {
            "summary": "Point an alias (default production) at a version", "security": admin,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PromoteRequest")}}},
            "responses": {"200": _json(_ref("Promoted"), "Promoted"), **_errors(400, 401, 404, 405, 409, 413, 422, 503)}}},
        "/v2": {"get": {"summary": "Open Inference Protocol: server metadata",
                        "responses": {"200": _json(_ref("ServerMetadata"), "Server metadata")}}},
        "/v2/health/live": {"get": {"summary": "Open Inference Protocol: liveness",
                                    "responses": {"200": _json(_ref("Live"), "Live")}}},
        "/v2/health/ready": {"get": {"summary": "Open Inference Protocol: readiness", "responses": {
            "200": _json(_ref("Ready"), "Ready"), "503": _json(_ref("Ready"), "Not ready")}}},
        "/v2/models/{name}": metadata([]),
        "/v2/models/{name}/versions/{version}": metadata([version_param]),
        "/v2/models/{name}/ready": ready([]),
        "/v2/models/{name}/versions/{version}/ready": ready([version_param]),
        "/v2/models/{name}/infer": infer([]),
        "/v2/models/{name}/versions/{version}/infer": infer([version_param]),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Scoreline", "version": scoreline.__version__,
                 "description": "Metadata-driven scoring. A non-finite score is never sent as JSON: the engine "
                                "reports that row as an error (422 for one entity, `error` in a batch row)."},
        "paths": paths,
        "components": {"schemas": _schemas(settings, model_id, version),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }


def _schemas(settings: ServerSettings, model_id: dict, version: dict) -> dict:
    request_id = {"type": "string", "minLength": 1, "maxLength": 200}
    key = {"type": ["integer", "string"], "description": "The entity key, under the name the model declares (e.g. customer-id)"}
    inputs = {"type": "object", "additionalProperties": _VALUE,
              "description": "Raw inputs by manifest name (dates as YYYY-MM-DD, timestamps ISO 8601)"}
    row = {"type": "object", "properties": {"request-id": request_id, "inputs": inputs}, "additionalProperties": key}
    contract = {"type": "object", "properties": {"model-id": {"type": "string"}, "model-version": {"type": "integer"}},
                "required": ["model-id", "model-version"], "additionalProperties": True}
    error = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                              "path": {"type": "string"}}, "required": ["error", "message"]}
    tensor_meta = {"type": "object", "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                                    "shape": {"type": "array", "items": {"type": "integer"}}},
                   "required": ["name", "datatype", "shape"]}
    tensor = {"type": "object", "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                                 "UINT64", "FP32", "FP64", "BYTES"]},
        "parameters": {"type": "object"}, "data": {}}, "required": ["name", "shape", "datatype"]}
    return {
        "ScoreRequest": {"type": "object", "required": ["model-id"], "properties": {
            "model-id": model_id, "model-version": version, "request-id": request_id, "inputs": inputs},
            "additionalProperties": key},
        "ScoreResponse": contract,
        "BatchRequest": {"type": "object", "required": ["model-id", "rows"], "additionalProperties": False, "properties": {
            "model-id": model_id, "model-version": version,
            "rows": {"type": "array", "items": row, "minItems": 1, "maxItems": settings.max_rows}}},
        "BatchResponse": {"type": "object", "required": ["model-id", "model-version", "results"], "properties": {
            "model-id": {"type": "string"}, "model-version": {"type": "integer"},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "request-id": {"type": "string"}, "error": {"oneOf": [{"type": "null"}, error]}},
                "additionalProperties": True}}}},
        "Model": {"type": "object", "additionalProperties": True, "properties": {
            "model-id": {"type": "string"}, "aliases": {"type": "object"}, "default-version": {"type": ["integer", "null"]},
            "versions": {"type": "array", "items": {"type": "object", "properties": {
                "version": {"type": "integer"}, "state": {"type": "string", "enum": ["ready", "failed", "not-loaded"]},
                "aliases": {"type": "array", "items": {"type": "string"}}, "error": {"type": "string"}}}},
            "contract": {"type": ["object", "null"]}}},
        "ModelList": {"type": "object", "required": ["models"],
                      "properties": {"models": {"type": "array", "items": _ref("Model")}}},
        "PromoteRequest": {"type": "object", "required": ["model-id", "version"], "additionalProperties": False,
                           "properties": {"model-id": model_id, "version": {"type": "integer", "minimum": 1},
                                          "alias": _ALIAS}},
        "Promoted": {"type": "object", "properties": {"model-id": {"type": "string"}, "alias": {"type": "string"},
                                                      "version": {"type": "integer"}}},
        "Error": error,
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}},
                  "required": ["ready"]},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}, "required": ["live"]},
        "V2Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta}}},
        "ModelReady": {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                       "required": ["name", "ready"]},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor}}},
    }
