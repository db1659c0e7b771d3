"""Refusals show nothing of the server's insides: an unknown model and a version that failed to
load are answered without a path of the server's disk (on v1 JSON, Arrow, v2 and /v1/models), and
the v2 protocol checks tensor ranges, names an unknown version at `$.model-version` and answers a
row scored from inline inputs with a null key, as v1 does."""

from __future__ import annotations

import json

import httpx
import pytest

from scoreline.registry.repository import Repository
from scoreline.server.app import create_app

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine

INLINE = {"date-of-birth": "1970-01-01", "state": "VIC", "account-balance": 1200.0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("refusals") / "registry")
    root = registry["root"]
    repo = Repository(root)
    # a version registered without validation whose entity store does not exist: it cannot load
    manifest = json.loads((repo.version_dir(MODEL_ID, 1) / "manifest.json").read_text())
    manifest["entity"]["store"]["path"] = "no-such-folder/customers.parquet"
    broken = root.parent / "broken.json"
    broken.write_text(json.dumps(manifest))
    version = repo.add(MODEL_ID, broken, repo.version_dir(MODEL_ID, 1) / "model.txt")
    repo.promote(MODEL_ID, version, "broken")
    engine = make_engine(root)
    try:
        with live_server(create_app(engine)) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield {"client": client, "root": root, "broken": version}
    finally:
        engine.close()


def _shows_nothing_of_the_server(text: str, root) -> None:
    assert str(root) not in text and str(root.parent) not in text
    assert "/tmp" not in text and "Traceback" not in text and "KeyError" not in text


def test_an_unknown_model_shows_no_path(served):
    client, root = served["client"], served["root"]
    answers = [
        client.post("/v1/score", json={"model-id": "nope", KEY: 1001}),
        client.post("/v1/score/batch", json={"model-id": "nope", "rows": [{KEY: 1001}]}),
        client.post("/v1/models/nope/score", content=b"", headers={
            "content-type": "application/vnd.apache.arrow.stream"}),
        client.post("/v2/models/nope/infer", json={"inputs": [
            {"name": KEY, "shape": [1], "datatype": "INT64", "data": [1001]}]}),
        client.get("/v1/models/nope"),
    ]
    for r in answers:
        assert r.status_code == 404, r.text
        _shows_nothing_of_the_server(r.text, root)


def test_a_version_that_failed_to_load_shows_no_path(served):
    client, root = served["client"], served["root"]
    for body in ({"model-id": MODEL_ID, "model-version": served["broken"], KEY: 1001},
                 {"model-id": MODEL_ID, "model-version": "broken", KEY: 1001}):
        r = client.post("/v1/score", json=body)
        assert r.status_code == 503, r.text
        assert "failed to load" in r.json()["message"]
        _shows_nothing_of_the_server(r.text, root)
    listing = client.get("/v1/models")
    assert listing.status_code == 200
    versions = listing.json()["models"][0]["versions"]
    assert any(v["state"] == "failed" for v in versions)
    _shows_nothing_of_the_server(listing.text, root)
    # the version that was live keeps serving
    assert client.post("/v1/score", json={"model-id": MODEL_ID, KEY: 1001}).status_code == 200


def test_v2_checks_tensor_ranges_and_names_the_version_field(served):
    client = served["client"]
    r = client.post(f"/v2/models/{MODEL_ID}/infer", json={"inputs": [
        {"name": KEY, "shape": [1], "datatype": "INT8", "data": [5973628]}]})
    assert r.status_code == 422 and "INT8" in r.json()["error"] and "$.inputs[0].data[0]" in r.json()["error"]
    r = client.post(f"/v2/models/{MODEL_ID}/versions/99/infer", json={"inputs": [
        {"name": KEY, "shape": [1], "datatype": "INT64", "data": [1001]}]})
    assert r.status_code == 404 and r.json()["error"].endswith("(at $.model-version)")
    _shows_nothing_of_the_server(r.text, served["root"])


def test_v2_inline_rows_answer_a_null_key_as_v1_does(served):
    client = served["client"]
    tensors = [{"name": "date-of-birth", "shape": [1], "datatype": "BYTES", "data": ["1970-01-01"]},
               {"name": "state", "shape": [1], "datatype": "BYTES", "data": ["VIC"]},
               {"name": "account-balance", "shape": [1], "datatype": "FP64", "data": [1200.0]}]
    r = client.post(f"/v2/models/{MODEL_ID}/infer", json={"inputs": tensors})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
    v1 = client.post("/v1/score", json={"model-id": MODEL_ID, "inputs": INLINE}).json()
    assert outputs[KEY] is None and v1[KEY] is None
    assert outputs["score"] == v1["score"]


def test_v2_names_the_field_of_a_malformed_request(served):
    client = served["client"]
    for body, path in [
        ({"inputs": [{"name": 5, "shape": [1], "datatype": "INT64", "data": [1]}]}, "$.inputs[0].name"),
        ({"inputs": [{"name": KEY, "shape": ["1"], "datatype": "INT64", "data": [1]}]}, "$.inputs[0].shape"),
        ({"inputs": [{"name": KEY, "shape": [1], "datatype": "INT64", "data": [1]}], "id": 3}, "$.id"),
        ({"inputs": [{"name": KEY, "shape": [1], "datatype": "INT64", "data": [1]}],
          "outputs": [{"name": "score", "parameters": []}]}, "$.outputs[0].parameters"),
        ({"input": []}, "$.inputs"),
    ]:
        r = client.post(f"/v2/models/{MODEL_ID}/infer", json=body)
        assert r.status_code == 422 and r.json()["error"].endswith(f"(at {path})"), (body, r.text)
