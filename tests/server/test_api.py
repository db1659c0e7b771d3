"""The v1 API on a live server (uvicorn on loopback, httpx): scoring, batches, Arrow IPC, models,
health, metrics, admin and API keys, and hand-written bad inputs (each a 4xx naming the field)."""

from __future__ import annotations

import io
import math

import httpx
import pyarrow as pa
import pytest

from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine

ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("srv") / "registry")


@pytest.fixture(scope="module")
def engine(registry):
    engine = make_engine(registry["root"])
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    settings = ServerSettings(max_rows=50, max_body_bytes=64 * 1024, max_arrow_rows=500,
                              admin_keys=("admin-secret",))
    with live_server(create_app(engine, settings=settings)) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c


def score(client, **body):
    return client.post("/v1/score", json={"model-id": MODEL_ID, **body})


def test_the_seed_call_answers_the_contract(client):
    r = score(client, **{KEY: 1001})
    assert r.status_code == 200
    body = r.json()
    assert list(body) == [KEY, "model-id", "model-version", "score", "application-decision"]
    assert body[KEY] == 1001 and body["model-id"] == MODEL_ID and body["model-version"] == 1
    assert 0 < body["score"] < 1
    assert body["application-decision"] == ("accept" if body["score"] >= 0.6 else "refer" if body["score"] >= 0.3 else "decline")


def test_inline_inputs_versions_aliases_and_request_ids(client, engine):
    inputs = {"date-of-birth": "1961-04-30", "state": "VIC", "account-balance": 1200.0}
    a = score(client, inputs=inputs, **{"request-id": "req-77"}).json()
    assert a["request-id"] == "req-77" and a["model-version"] == 1
    v2 = score(client, inputs={**inputs, "postcode": 3000}, **{"model-version": 2}).json()
    assert v2["model-version"] == 2
    prod = score(client, inputs=inputs, **{"model-version": "production"}).json()
    assert prod["score"] == a["score"]
    # the same inputs through the one-row engine path give the same score
    direct = engine.deployment(MODEL_ID).score(pa.RecordBatch.from_pydict(
        {"date-of-birth": pa.array([__import__("datetime").date(1961, 4, 30)]), "state": ["VIC"],
         "account-balance": [1200.0]}))
    assert math.isclose(direct.column("score")[0].as_py(), a["score"], rel_tol=0, abs_tol=1e-15)


def test_batch_endpoint_scores_rows_and_fails_rows_one_by_one(client):
    rows = [{KEY: 1000 + i} for i in range(10)] + [{KEY: 5}, {"inputs": {"state": "XX", "date-of-birth": "1980-01-01",
                                                                         "account-balance": 5.0}}]
    r = client.post("/v1/score/batch", json={"model-id": MODEL_ID, "rows": rows})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x[KEY] for x in results[:10]] == list(range(1000, 1010))
    assert all(x["error"] is None and 0 < x["score"] < 1 for x in results[:10])
    assert results[10]["error"]["error"] == "not-found" and results[10]["error"]["path"] == f"$.rows[10].{KEY}"
    assert results[10]["score"] is None
    assert results[11]["error"]["path"] == "$.rows[11].inputs.state"
    singles = [score(client, **{KEY: 1000 + i}).json()["score"] for i in range(10)]
    assert singles == [x["score"] for x in results[:10]]


def test_arrow_ipc_in_and_out(client):
    table = pa.table({KEY: pa.array([1000, 1001, 7, 1002], pa.int64()), "request-id": ["a", "b", "c", "d"]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = client.post(f"/v1/models/{MODEL_ID}/score", content=sink.getvalue(), headers={"content-type": ARROW})
    assert r.status_code == 200 and r.headers["content-type"] == ARROW
    out = pa.ipc.open_stream(r.content).read_all()
    assert out.column_names == [KEY, "model-id", "model-version", "score", "application-decision", "error"]
    assert out[KEY].to_pylist() == [1000, 1001, 7, 1002]
    assert out["error"].is_null().to_pylist() == [True, True, False, True]
    singles = [score(client, **{KEY: k}).json()["score"] for k in (1000, 1001, 1002)]
    got = out["score"].to_pylist()
    assert [got[0], got[1], got[3]] == singles
    v2 = client.post(f"/v1/models/{MODEL_ID}/score?model-version=2", content=sink.getvalue(),
                     headers={"content-type": ARROW})
    assert pa.ipc.open_stream(v2.content).read_all()["model-version"].to_pylist() == [2] * 4


def test_models_health_and_metrics(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["model-id"] for m in models] == [MODEL_ID]
    one = client.get(f"/v1/models/{MODEL_ID}").json()
    assert one["model-id"] == MODEL_ID and [v["version"] for v in one["versions"]] == [1, 2]
    assert one["contract"]["key"] == KEY
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    score(client, **{KEY: 1003})
    text = client.get("/metrics").text
    assert 'scoreline_scored_rows_total{model="credit-risk",version="1",outcome="ok"' in text
    assert "scoreline_batch_rows_bucket" in text and "scoreline_score_latency_seconds_count" in text
    assert 'route="/v1/score",method="POST",status="200"' in text


BAD = [
    # (body or raw bytes, status, error path)
    (b"{not json", 400, "$"),
    (b"[1, 2]", 422, "$"),
    ({"customer-id": 1001}, 422, "$.model-id"),
    ({"model-id": 42, KEY: 1001}, 422, "$.model-id"),
    ({"model-id": "../../etc/passwd", KEY: 1001}, 422, "$.model-id"),
    ({"model-id": "no-such-model", KEY: 1001}, 404, None),
    ({"model-id": MODEL_ID, "model-version": 99, KEY: 1001}, 404, None),
    ({"model-id": MODEL_ID, "model-version": "staging", KEY: 1001}, 404, None),
    ({"model-id": MODEL_ID, "model-version": 0, KEY: 1001}, 422, "$.model-version"),
    ({"model-id": MODEL_ID, KEY: "1001"}, 422, f"$.{KEY}"),
    ({"model-id": MODEL_ID, KEY: True}, 422, f"$.{KEY}"),
    ({"model-id": MODEL_ID, KEY: 2**70}, 422, f"$.{KEY}"),
    ({"model-id": MODEL_ID, KEY: 424242}, 404, f"$.{KEY}"),
    ({"model-id": MODEL_ID}, 422, "$"),
    ({"model-id": MODEL_ID, "customer_id": 1001}, 422, "$.customer_id"),
    ({"model-id": MODEL_ID, "inputs": [1]}, 422, "$.inputs"),
    ({"model-id": MODEL_ID, "inputs": {"age": 3}}, 422, "$.inputs.age"),
    ({"model-id": MODEL_ID, "inputs": {"account-balance": "lots"}}, 422, "$.inputs.account-balance"),
    ({"model-id": MODEL_ID, "inputs": {"date-of-birth": "2020-02-30"}}, 422, "$.inputs.date-of-birth"),
    ({"model-id": MODEL_ID, "inputs": {"date-of-birth": "1970-01-01", "state": "VIC", "account-balance": -5.0}}, 422,
     "$.inputs.account-balance"),
    ({"model-id": MODEL_ID, "inputs": {"state": "VIC", "account-balance": 5.0}}, 422, "$.inputs.date-of-birth"),
    ({"model-id": MODEL_ID, KEY: 1001, "request-id": 5}, 422, "$.request-id"),
    (b'{"model-id": "credit-risk", "customer-id": NaN}', 400, "$"),
]


@pytest.mark.parametrize("body,status,path", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_4xx_naming_the_field(client, body, status, path):
    r = client.post("/v1/score", content=body) if isinstance(body, bytes) else client.post("/v1/score", json=body)
    assert r.status_code == status, r.text
    error = r.json()
    assert set(error) <= {"error", "message", "path"} and error["message"]
    if path is not None:
        assert error["path"] == path


def test_limits_on_body_size_rows_and_media_type(client):
    big = {"model-id": MODEL_ID, KEY: 1001, "inputs": {"state": "x" * 70_000}}
    r = client.post("/v1/score", json=big)
    assert r.status_code == 413 and r.json()["error"] == "too-large"
    rows = [{KEY: 1000}] * 51
    r = client.post("/v1/score/batch", json={"model-id": MODEL_ID, "rows": rows})
    assert r.status_code == 413 and r.json()["path"] == "$.rows"
    r = client.post(f"/v1/models/{MODEL_ID}/score", content=b"xx", headers={"content-type": "text/csv"})
    assert r.status_code == 415
    r = client.post(f"/v1/models/{MODEL_ID}/score", content=b"not arrow", headers={"content-type": ARROW})
    assert r.status_code == 400
    table = pa.table({KEY: pa.array(range(501), pa.int64())})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = client.post(f"/v1/models/{MODEL_ID}/score", content=sink.getvalue(), headers={"content-type": ARROW})
    assert r.status_code == 413
    bad_column = pa.table({"postcodes": [1]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, bad_column.schema) as w:
        w.write_table(bad_column)
    r = client.post(f"/v1/models/{MODEL_ID}/score", content=sink.getvalue(), headers={"content-type": ARROW})
    assert r.status_code == 422 and r.json()["path"] == "column 'postcodes'"
    assert client.get("/v1/score").status_code == 405


def test_admin_needs_its_key_and_promotes(client, registry):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    headers = {"x-api-key": "admin-secret"}
    assert client.post("/admin/reload", headers=headers).status_code == 200
    r = client.post("/admin/promote", headers=headers, json={"model-id": MODEL_ID, "version": 99})
    assert r.status_code == 404
    r = client.post("/admin/promote", headers=headers, json={"model-id": MODEL_ID, "version": "x"})
    assert r.status_code == 422 and r.json()["path"] == "$.version"
    r = client.post("/admin/promote", headers=headers, json={"model-id": MODEL_ID, "version": registry["v1"]})
    assert r.status_code == 200 and r.json()["version"] == registry["v1"]


def test_api_keys_guard_the_model_api_but_not_probes(engine):
    settings = ServerSettings(api_keys=("k1", "k2"))
    with live_server(create_app(engine, settings=settings)) as url, httpx.Client(base_url=url) as c:
        body = {"model-id": MODEL_ID, KEY: 1001}
        assert c.post("/v1/score", json=body).status_code == 401
        assert c.post("/v1/score", json=body, headers={"authorization": "Bearer k2"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "nope"}).status_code == 401
        r = c.get(f"/v2/models/{MODEL_ID}")
        assert r.status_code == 401 and set(r.json()) == {"error"}
        assert c.get("/healthz").status_code == 200 and c.get("/v2/health/live").status_code == 200
        assert c.post("/admin/reload", headers={"x-api-key": "k1"}).status_code == 401  # no admin key configured
