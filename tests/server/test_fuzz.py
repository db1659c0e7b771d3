"""Property-based fuzzing of the live server from its own /openapi.json (schemathesis): whatever a
client sends, the answer is never a 5xx, and it conforms to the document (status codes, content
types, response bodies)."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.server import build_registry, live_server, make_engine


# Arrow IPC bodies are bytes: fuzz them as the built-in binary serializer does.
schemathesis.serializer.alias("application/vnd.apache.arrow.stream", "application/octet-stream")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("fuzz") / "registry")
    engine = make_engine(registry["root"])
    settings = ServerSettings(max_rows=20, max_body_bytes=32 * 1024, max_arrow_rows=100, admin_keys=("fuzz",))
    with live_server(create_app(engine, settings=settings)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), url
    engine.close()


@pytest.mark.slow
def test_no_server_errors_and_answers_match_the_document(api_schema):
    api_schema, url = api_schema
    # schemathesis' pytest plugin does not run under this pytest, so each operation gets its own
    # Hypothesis test built from the operation's strategy (same generation, same checks).
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 19, [o.label for o in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(checks=checks, headers={"x-api-key": "fuzz"})

        fuzz()
    # the fuzzer reached every operation, scoring included (counted by the server itself)
    counts = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("scoreline_http_requests_total{"):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0) + float(line.rsplit(" ", 1)[1])
    assert all(counts.get(path, 0) >= 5 for path in ("/v1/score", "/v1/score/batch", "/v1/models/{model_id}/score",
                                                      "/v2/models/{name}/infer", "/admin/promote")), counts


EXAMPLES = int(os.environ.get("SCORELINE_FUZZ_EXAMPLES", "40"))  # per operation: ~800 requests, ~20 s here


# --- Hypothesis-drawn bodies on every endpoint -------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) \
    | st.integers(min_value=-(2**70), max_value=2**70)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=25)
FIELDS = ["model-id", "customer-id", "model-version", "inputs", "rows", "request-id", "inputs", "version",
          "date-of-birth", "state", "account-balance", "postcode", "parameters", "outputs", "id", "datatype",
          "shape", "data", "name", "alias"]


def _confused(value):
    """Objects with the endpoints' own field names holding values of any type."""
    return st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6).map(
        lambda d: {"model-id": "credit-risk", **d} if value else d)


def _nested(depth: int) -> bytes:
    return b'{"rows": ' + b"[" * depth + b"]" * depth + b"}"


BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.booleans().flatmap(_confused).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model-id": st.just("credit-risk"), "rows": st.lists(
        st.booleans().flatmap(_confused), max_size=5)}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["customer-id", "date-of-birth", "state", "x"]),
        "datatype": st.sampled_from(["INT64", "INT8", "FP32", "BYTES", "BOOL", "FP16", "nope"]),
        "shape": st.lists(st.integers(-2, 5), max_size=3), "data": JSON}), max_size=3)}).map(
        lambda v: json.dumps(v).encode()),
    st.integers(900, 3000).map(_nested),
    st.binary(max_size=200),                                       # not UTF-8, not JSON
    st.text(max_size=50).map(lambda t: t.encode("utf-16")),
    st.integers(2000, 40_000).map(lambda n: b'{"model-id": "credit-risk", "rows": [' + b"1," * n + b"1]}"),
)
POSTS = ["/v1/score", "/v1/score/batch", "/v1/models/credit-risk/score", "/v1/models/nope/score",
         "/v2/models/credit-risk/infer", "/v2/models/credit-risk/versions/1/infer", "/v2/models/x/infer",
         "/admin/promote", "/admin/reload"]
GETS = ["/v1/models/{}", "/v2/models/{}", "/v2/models/{}/ready", "/v2/models/credit-risk/versions/{}"]


@pytest.mark.slow
def test_drawn_bodies_never_get_a_5xx_a_path_or_a_traceback(api_schema, tmp_path_factory):
    _, url = api_schema
    secrets = [str(tmp_path_factory.getbasetemp()), "/tmp/", "site-packages", "Traceback", 'File "', "/work/"]
    with httpx.Client(base_url=url, timeout=30, headers={"x-api-key": "fuzz"}) as client:

        def check(answer):
            assert answer.status_code < 500 or answer.json().get("error") in ("overloaded",), answer.text
            for secret in secrets:
                assert secret not in answer.text, (secret, answer.text)

        @given(path=st.sampled_from(POSTS), body=BODIES, json_type=st.booleans())
        @settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def post(path, body, json_type):
            headers = {"content-type": "application/json" if json_type else "application/vnd.apache.arrow.stream"}
            check(client.post(path, content=body, headers=headers))

        @given(path=st.sampled_from(GETS), name=st.text(min_size=1, max_size=30))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def get(path, name):
            check(client.get(path.format(quote(name, safe=""))))

        post()
        get()
