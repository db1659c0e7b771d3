"""Property-based fuzzing of the live server from its own /openapi.json (schemathesis): whatever a
client sends, the answer is never a 5xx, and it conforms to the document (status codes, content
types, response bodies)."""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
