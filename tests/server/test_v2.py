"""The Open Inference Protocol v2 on a live server, driven by the official Triton HTTP client
(binary tensors and JSON tensors), plus raw-JSON protocol errors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from scoreline.server.app import create_app

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("v2") / "registry")
    engine = make_engine(registry["root"])
    with live_server(create_app(engine)) as url:
        yield url
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.removeprefix("http://"))
    yield c
    c.close()


def keys_input(keys, binary=True):
    tensor = triton.InferInput(KEY, [len(keys)], "INT64")
    tensor.set_data_from_numpy(np.array(keys, dtype=np.int64), binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready(MODEL_ID) and client.is_model_ready(MODEL_ID, "2")
    meta = client.get_model_metadata(MODEL_ID)
    assert meta["name"] == MODEL_ID and meta["versions"] == ["1", "2"]
    assert [i["name"] for i in meta["inputs"]] == [KEY, "date-of-birth", "state", "account-balance"]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        (KEY, "INT64"), ("model-id", "BYTES"), ("model-version", "INT64"), ("score", "FP64"),
        ("application-decision", "BYTES")]
    v2 = client.get_model_metadata(MODEL_ID, "2")
    assert "postcode" in [i["name"] for i in v2["inputs"]]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_by_entity_key_matches_v1(client, server, binary):
    keys = [1000, 1001, 1002, 1003]
    outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False)
                                   for n in (KEY, "score", "application-decision", "model-version")]
    result = client.infer(MODEL_ID, [keys_input(keys, binary)], outputs=outputs, request_id="v2-req")
    assert result.get_response()["id"] == "v2-req" and result.get_response()["model_version"] == "1"
    assert result.as_numpy(KEY).tolist() == keys
    with httpx.Client(base_url=server) as http:
        v1 = [http.post("/v1/score", json={"model-id": MODEL_ID, KEY: k}).json() for k in keys]
    assert result.as_numpy("score").tolist() == [x["score"] for x in v1]
    decisions = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("application-decision").tolist()]
    assert decisions == [x["application-decision"] for x in v1]
    assert result.as_numpy("model-version").tolist() == [1] * 4


def test_infer_inline_inputs_and_versions(client):
    inputs = []
    for name, datatype, values in [("date-of-birth", "BYTES", [b"1960-01-31", b"1999-12-01"]),
                                   ("state", "BYTES", [b"VIC", b"WA"]),
                                   ("account-balance", "FP64", [100.0, 25000.5]),
                                   ("postcode", "INT64", [3000, 6000])]:
        tensor = triton.InferInput(name, [2, 1], datatype)
        tensor.set_data_from_numpy(np.array(values, dtype=object if datatype == "BYTES" else None).reshape(2, 1))
        inputs.append(tensor)
    result = client.infer(MODEL_ID, inputs, model_version="2")
    assert result.as_numpy("model-version").tolist() == [2, 2]
    assert all(0 < s < 1 for s in result.as_numpy("score"))


def test_protocol_errors(client, server):
    with pytest.raises(InferenceServerException) as unknown:
        client.infer(MODEL_ID, [keys_input([1000, 5])])
    assert unknown.value.status() == "404" and "row 1" in unknown.value.message()
    with pytest.raises(InferenceServerException) as missing_model:
        client.get_model_metadata("no-such-model")
    assert missing_model.value.status() == "404"
    with pytest.raises(InferenceServerException) as bad_type:
        tensor = triton.InferInput(KEY, [1], "FP16")
        tensor.set_data_from_numpy(np.array([1], dtype=np.float16))
        client.infer(MODEL_ID, [tensor])
    assert bad_type.value.status() == "422" and "FP16" in bad_type.value.message()
    with httpx.Client(base_url=server) as http:
        cases = [
            (b"{", 400),
            (b'{"inputs": 3}', 422),
            (b'{"inputs": [{"name": "customer-id", "shape": [2], "datatype": "INT64", "data": [1000]}]}', 422),
            (b'{"inputs": [{"name": "customer-id", "shape": [1], "datatype": "INT64", "data": [1.5]}]}', 422),
            (b'{"inputs": [{"name": "customer-id", "shape": [1], "datatype": "INT64", "data": ["1000"]}]}', 422),
            (b'{"inputs": [{"name": "nope", "shape": [1], "datatype": "INT64", "data": [1000]}]}', 422),
            (b'{"inputs": [{"name": "customer-id", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}', 422),
            (b'{"inputs": [{"name": "customer-id", "shape": [1], "datatype": "INT64", "parameters": '
             b'{"binary_data_size": 8}}]}', 400),
            (b'{"inputs": [{"name": "customer-id", "shape": [1], "datatype": "INT64", "data": [1000]}], '
             b'"outputs": [{"name": "nope"}]}', 404),
        ]
        for body, status in cases:
            r = http.post(f"/v2/models/{MODEL_ID}/infer", content=body)
            assert r.status_code == status, (body, r.text)
            assert list(r.json()) == ["error"] and r.json()["error"]
